"""Trainer checkpoints of :func:`~srft_peft.tracking.train.finetune_rgbx`: ``accelerator.save_state`` folders
``output_dir/checkpoints/step_<n>`` with ``trainer_state.json``, and the checks made before a run resumes from one."""

from __future__ import annotations

import json
import re
import shutil
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from safetensors import safe_open

if TYPE_CHECKING:
    from .config import FinetuneConfig

__all__ = ["CheckpointRule", "check_checkpoint", "list_checkpoints", "resume_point", "save_checkpoint"]

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


def any_process(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is True on any process (an all-reduce MAX; ``flag`` itself with one process). Every process
    must call it at the same point."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


@dataclass
class CheckpointRule:
    """When a fine-tune writes a checkpoint: every ``every_steps`` steps, and/or once ``every_minutes`` have passed
    since the last one (or the start), and at ``total_steps``. The time rule is looked at only on steps that are a
    multiple of ``check_every``, where the processes agree through one all-reduce (:func:`any_process`): every process
    then saves at the same step even when their clocks differ (a slower rank, a later start).

    Example:
        >>> rule = CheckpointRule(every_steps=100, every_minutes=0, total_steps=250)
        >>> [s for s in range(1, 251) if rule.due(s)]
        [100, 200, 250]
    """

    every_steps: int
    every_minutes: float
    total_steps: int
    check_every: int = 10
    device: torch.device | str = "cpu"
    clock: Callable[[], float] = time.monotonic
    last_save: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_save = self.clock()

    @property
    def enabled(self) -> bool:
        return self.every_steps > 0 or self.every_minutes > 0

    def due(self, step: int) -> bool:
        """Whether to save after optimizer step ``step``; resets the clock when it says yes. Call it at every step on
        every process (it holds a collective on the time rule's check steps)."""
        if not self.enabled:
            return False
        save = step == self.total_steps or (self.every_steps > 0 and step % self.every_steps == 0)
        if self.every_minutes > 0 and step % self.check_every == 0:
            late = self.clock() - self.last_save >= 60.0 * self.every_minutes
            save = any_process(late, self.device) or save
        if save:
            self.last_save = self.clock()
        return save
