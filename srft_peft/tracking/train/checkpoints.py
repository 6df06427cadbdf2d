"""Trainer checkpoints of :func:`~srft_peft.tracking.train.finetune_rgbx`: ``accelerator.save_state`` folders
``output_dir/checkpoints/step_<n>`` with ``trainer_state.json``, and the checks made before a run resumes from one."""

from __future__ import annotations

import json
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

if TYPE_CHECKING:
    from .config import FinetuneConfig

__all__ = ["check_checkpoint", "list_checkpoints", "resume_point", "save_checkpoint"]

_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of the checkpoints under ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def resume_point(cfg: FinetuneConfig, output_dir: Path) -> tuple[Path, int] | None:
    """``(checkpoint folder, step)`` to resume from (``cfg.resume``: a folder or ``"latest"``), or None."""
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        found = list_checkpoints(output_dir / "checkpoints")
        if not found:
            warnings.warn(f"--resume latest: no checkpoint in {output_dir / 'checkpoints'}; starting from scratch",
                          stacklevel=3)
            return None
        return found[-1][1], check_checkpoint(found[-1][1])
    path = Path(cfg.resume).expanduser()
    return path, check_checkpoint(path)


def check_checkpoint(path: Path) -> int:
    """The step of a checkpoint folder written by ``save_checkpoint``, after a quick look at every file in it; any
    problem is an error naming the file (before the run creates or changes anything)."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"--resume {path}: not a checkpoint folder written by finetune_rgbx (no {state_file})")
    try:
        step = json.loads(state_file.read_bytes().decode("utf-8")).get("step")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"--resume: {state_file} is not a JSON object with a 'step' ({err})") from None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"--resume: {state_file}: 'step' must be a non-negative integer, got {step!r}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"--resume {path}: no model weights (*.safetensors) in the checkpoint folder")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # SafetensorError: truncated header, not a safetensors file, ...
            raise ValueError(f"--resume: {file} is not a readable safetensors file ({err})") from None
    for file in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):  # accelerate writes these with torch.save (zip)
        if not zipfile.is_zipfile(file):
            raise ValueError(f"--resume: {file} is damaged (not a complete torch.save archive)")
    return step


def save_checkpoint(accelerator: Any, output_dir: Path, step: int, keep: int) -> Path:
    """``accelerator.save_state`` to ``output_dir/checkpoints/step_<step>`` with ``trainer_state.json``; keeps the
    ``keep`` newest (0 = all)."""
    folder = output_dir / "checkpoints" / f"step_{step:06d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        if keep > 0:
            for _, old in list_checkpoints(output_dir / "checkpoints")[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder
