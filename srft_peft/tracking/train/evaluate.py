"""Evaluation of a fine-tuned tracker: one-pass runs on RGB-X sequences or on RGB-only ones fed as ``[rgb, rgb]``
(RGB-skill retention), scalar metrics, JSON-safe results and the text table of the examples."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Sequence
from ..evaluation import run_tracker
from ..metrics import evaluate_results
from ..model import OSTrackRGBX
from ..tracker import Tracker

__all__ = ["SCALARS", "RepeatRGB", "evaluate_tracker", "format_results_table", "jsonable", "scalars"]

#: The scalar metrics kept in results.json (those the protocol of the data set has).
SCALARS = ("PR", "NPR", "SR", "MPR", "MSR", "precision", "recall", "F", "fps")


def jsonable(value: Any) -> Any:
    """``value`` with NumPy values, tuples and paths made JSON-serializable (non-finite floats become None)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


def scalars(summary: dict[str, Any]) -> dict[str, float]:
    """The :data:`SCALARS` of an :func:`~srft_peft.tracking.evaluate_results` summary."""
    return {k: float(summary[k]) for k in SCALARS if k in summary}


class RepeatRGB:
    """Feeds an RGB-X tracker RGB-only frames as [rgb, rgb] (RGB-skill retention)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def initialize(self, image: np.ndarray, box: np.ndarray) -> Any:
        return self.tracker.initialize(np.concatenate([image[..., :3]] * 2, axis=2), box)

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        return self.tracker.track(np.concatenate([image[..., :3]] * 2, axis=2))


def evaluate_tracker(model: OSTrackRGBX, seqs: list[Sequence], results_dir: Path | None, device: Any,
                     progress: bool, rgb_input: bool = False) -> dict[str, Any]:
    """One-pass evaluation of ``model`` on ``seqs`` (RGB channels only, as ``[rgb, rgb]`` for an RGB-X model, when
    ``rgb_input``): the :func:`~srft_peft.tracking.evaluate_results` summary, ``per_sequence`` scores included.
    Leaves ``model`` in eval mode."""
    tracker: Any = Tracker(model, device=device)
    if rgb_input and 3 not in model.config.input_channels:  # an RGB-X architecture reads [rgb, rgb]
        tracker = RepeatRGB(tracker)
    results = run_tracker(tracker, seqs, results_dir=results_dir, progress=progress, rgb_only=rgb_input)
    return evaluate_results(seqs, results)


def format_results_table(results: dict[str, Any]) -> str:
    """The tracking metrics of :func:`~srft_peft.tracking.train.finetune_rgbx` results as a small text table (%)."""
    start = "start: converted model (step 0)"
    rows = []
    if "rgb_tracker_metrics" in results:
        rows.append(("RGB tracker (RGB channels)", "RGB-X test", results["rgb_tracker_metrics"]))
    if "baseline_metrics" in results:
        rows.append((start, "RGB-X test", results["baseline_metrics"]))
    rows.append((results["method"], "RGB-X test", results["metrics"]))
    if "baseline_rgb_metrics" in results:
        rows.append((f"{start} on [rgb, rgb]", "RGB test", results["baseline_rgb_metrics"]))
    if "rgb_metrics" in results:
        rows.append((f"{results['method']} on [rgb, rgb]", "RGB test", results["rgb_metrics"]))
    keys = [k for k in SCALARS if k != "fps" and any(k in r[2] for r in rows)]
    header = ["model", "test set", *keys]
    cells = [header] + [[name, split, *(f"{100 * m[k]:.1f}" if m.get(k) is not None else "-" for k in keys)]
                        for name, split, m in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
