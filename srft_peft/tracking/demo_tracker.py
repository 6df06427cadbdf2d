"""The demo RGB tracker shipped with the package: the same weights on every machine.

It was pretrained once by ``scripts/pretrain_demo_tracker.py`` on the RGB ``pretrain`` split of demo data v2 (recipe
chosen on ``val``, scored once on ``retention``) and is stored in ``assets/demo_rgb_tracker/`` as fp16 safetensors
with its ``config.json``, ``recipe.json`` and a ``SHA256`` file. :func:`load_demo_rgb_tracker` checks the checksums
before reading anything and returns the tracker in float32.

Example:
    >>> from srft_peft.tracking import load_demo_rgb_tracker
    >>> model = load_demo_rgb_tracker()  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import file_sha256
from .checkpoint_io import CONFIG_NAME, WEIGHTS_NAME, load_tracker, save_tracker
from .model import OSTrackRGBX

__all__ = ["DEMO_TRACKER_DIR", "demo_tracker_recipe", "load_demo_rgb_tracker", "verify_checksums", "write_demo_tracker"]

DEMO_TRACKER_DIR = Path(__file__).resolve().parent / "assets" / "demo_rgb_tracker"
CHECKSUM_NAME = "SHA256"
RECIPE_NAME = "recipe.json"
CHECKED_FILES = (CONFIG_NAME, WEIGHTS_NAME)


def _read_checksums(directory: Path) -> dict[str, str]:
    path = directory / CHECKSUM_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (expected the checksums of the demo tracker)")
    sums: dict[str, str] = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise ValueError(f"{path}: malformed line {line!r} (expected '<sha256>  <file name>')")
        sums[name] = digest
    missing = [name for name in CHECKED_FILES if name not in sums]
    if missing:
        raise ValueError(f"{path}: no checksum for {missing}")
    return sums


def verify_checksums(directory: str | Path) -> None:
    """Raise ``ValueError`` naming the file if a file of ``directory`` differs from its ``SHA256`` entry."""
    directory = Path(directory)
    for name, expected in _read_checksums(directory).items():
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (listed in {directory / CHECKSUM_NAME})")
        actual = file_sha256(path)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match {expected} in {directory / CHECKSUM_NAME}; "
                             "the file is corrupt or was modified (re-install the package or re-train the tracker "
                             "with scripts/pretrain_demo_tracker.py)")


def load_demo_rgb_tracker(directory: str | Path | None = None, device: str | torch.device = "cpu") -> OSTrackRGBX:
    """The shipped demo RGB tracker in float32, after checking its checksums.

    Args:
        directory: a folder written by :func:`write_demo_tracker`; default the package's shipped asset.
        device: where the model goes.

    Raises:
        FileNotFoundError: a file of the asset is missing.
        ValueError: a file's sha256 differs from its entry in ``SHA256`` (the message names the file).
    """
    directory = Path(directory) if directory is not None else DEMO_TRACKER_DIR
    verify_checksums(directory)
    model = load_tracker(directory).float()  # fp16 storage -> fp32 parameters
    return model.to(device).eval()


def demo_tracker_recipe(directory: str | Path | None = None) -> dict[str, Any]:
    """The ``recipe.json`` of the demo tracker: script arguments, data, library version, val/retention metrics."""
    path = (Path(directory) if directory is not None else DEMO_TRACKER_DIR) / RECIPE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return json.loads(path.read_text())


def write_demo_tracker(model: OSTrackRGBX, directory: str | Path, recipe: dict[str, Any]) -> str:
    """Write ``model`` with fp16 weights, ``recipe.json`` and ``SHA256`` to ``directory``; return the weights' sha256."""
    directory = Path(directory)
    half = OSTrackRGBX(model.config)
    half.load_state_dict(model.state_dict())
    save_tracker(half.half(), directory)
    sums = {name: file_sha256(directory / name) for name in CHECKED_FILES}
    (directory / RECIPE_NAME).write_text(json.dumps({**recipe, "sha256": sums[WEIGHTS_NAME]}, indent=2) + "\n")
    (directory / CHECKSUM_NAME).write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums[WEIGHTS_NAME]
