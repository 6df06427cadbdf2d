"""Evaluation of a fine-tuned tracker: one-pass runs on RGB-X sequences or on RGB-only ones fed as ``[rgb, rgb]``
(RGB-skill retention), spread over the processes of a run (:class:`Processes`), scalar metrics, JSON-safe results
and the text table of the examples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import Sequence
from ..evaluation import SequenceResult, result_prefix, run_tracker
from ..metrics import evaluate_results
from ..model import OSTrackRGBX
from ..tracker import Tracker

__all__ = ["EVAL_TIMEOUT_MINUTES", "SCALARS", "Processes", "RepeatRGB", "evaluate_tracker", "format_results_table",
           "jsonable", "scalars", "shard_sequences"]

#: How long a process waits for the others at an evaluation's merge (the test set of LasHeR is ~220 k frames).
EVAL_TIMEOUT_MINUTES = 24 * 60.0

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


def shard_sequences(seqs: list[Sequence], num_shards: int, index: int) -> list[Sequence]:
    """Shard ``index`` of ``num_shards`` with about equal frame counts: the longest sequence first goes to the shard
    with the fewest frames so far (the lowest index on ties); each shard keeps the order of ``seqs``. Every process
    computes the same split.

    Example:
        >>> seqs = [Sequence(n, ["f"] * k, [], np.ones((k, 4)), modality="rgb") for n, k in [("a", 5), ("b", 3), ("c", 2)]]
        >>> [s.name for s in shard_sequences(seqs, 2, 0)], [s.name for s in shard_sequences(seqs, 2, 1)]
        (['a'], ['b', 'c'])
    """
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index must be in [0, {num_shards}), got {index}")
    loads = [0] * num_shards
    owner = [0] * len(seqs)
    for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i)):
        shard = min(range(num_shards), key=lambda k: (loads[k], k))
        owner[i] = shard
        loads[shard] += len(seqs[i])
    return [s for s, k in zip(seqs, owner) if k == index]


@dataclass
class Processes:
    """The processes an evaluation is spread over: each runs its :func:`shard_sequences` share, then all exchange
    their results (an all-gather on a gloo group of their own whose timeout, ``timeout_minutes``, is long enough for
    the slowest share, whatever the training's process group allows), so every process holds all of them.

    ``Processes()`` is the single process. Make the group on every process at the same point of the run (it is a
    collective), e.g. right after the ``Accelerator``: ``Processes.from_accelerator(accelerator)``.
    """

    rank: int = 0
    world_size: int = 1
    group: Any = None

    @classmethod
    def from_accelerator(cls, accelerator: Any, timeout_minutes: float = EVAL_TIMEOUT_MINUTES) -> Processes:
        """The processes of ``accelerator`` (a new gloo group when there are several)."""
        if accelerator.num_processes == 1:
            return cls()
        import torch.distributed as dist

        group = dist.new_group(backend="gloo", timeout=timedelta(minutes=timeout_minutes))
        return cls(accelerator.process_index, accelerator.num_processes, group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, value: Any) -> list[Any]:
        """``value`` of every process, in rank order (a collective: every process must call it)."""
        if self.world_size == 1:
            return [value]
        if self.group is None:
            raise RuntimeError(f"Processes: rank {self.rank} of {self.world_size} has no evaluation group (closed, or "
                               "not made with Processes.from_accelerator)")
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def barrier(self) -> None:
        """Wait for every process (on the evaluation group, so with its long timeout)."""
        self.all_gather(None)

    def close(self) -> None:
        """Wait for every process, then destroy the evaluation group (before the training's process group, which
        ``accelerator.end_training()`` destroys): a gloo group left to the interpreter's exit can abort the process
        ("terminate called without an active exception"). The single process has nothing to close."""
        if self.group is None:
            return
        import torch.distributed as dist

        self.barrier()
        dist.destroy_process_group(self.group)
        self.group = None


def evaluate_tracker(model: OSTrackRGBX, seqs: list[Sequence], results_dir: Path | None, device: Any,
                     progress: bool, rgb_input: bool = False, processes: Processes | None = None,
                     tracker_name: str | None = None) -> dict[str, Any]:
    """One-pass evaluation of ``model`` on ``seqs`` (RGB channels only, as ``[rgb, rgb]`` for an RGB-X model, when
    ``rgb_input``): the :func:`~srft_peft.tracking.evaluate_results` summary, ``per_sequence`` scores included, the
    same on every process. With several ``processes`` each runs its :func:`shard_sequences` share and writes its
    files, then all exchange the results and score all of them in the order of ``seqs``: the summary equals the
    single-process one (``fps`` aside). Result files are named ``<tracker_name>_<seq>.txt`` where the dataset's
    toolkit reads that (:func:`~srft_peft.tracking.result_prefix`; ``tracker_name`` defaults to the folder name),
    ``<seq>.txt`` otherwise; ``results_dir`` must be one folder all processes see. Leaves ``model`` in eval mode."""
    processes = processes or Processes()
    tracker: Any = Tracker(model, device=device)
    if rgb_input and 3 not in model.config.input_channels:  # an RGB-X architecture reads [rgb, rgb]
        tracker = RepeatRGB(tracker)
    name = tracker_name or (Path(results_dir).name if results_dir is not None else "tracker")
    share = shard_sequences(seqs, processes.world_size, processes.rank)
    mine = run_tracker(tracker, share, results_dir=results_dir, progress=progress, rgb_only=rgb_input,
                       prefix=result_prefix(seqs, name))
    results: dict[str, SequenceResult] = {}
    for part in processes.all_gather(mine):
        results.update(part)
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
