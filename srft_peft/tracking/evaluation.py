"""Run a tracker over sequences (one-pass evaluation) and read/write results in the toolkits' text format.

A tracker is any object with

* ``initialize(image: np.ndarray[H, W, 6 or 3] uint8, box_xywh: np.ndarray) -> None`` and
* ``track(image) -> tuple[np.ndarray box_xywh (4,), float confidence]``.

Files written per sequence (``results_dir``): ``<prefix><seq>.txt`` (one ``x,y,w,h`` line per frame, the format of the
LasHeR / RGBT234 / GTOT / VisEvent toolkits), ``<prefix><seq>_confidence.value`` (one confidence per line, DepthTrack /
VOT long-term style) and ``<prefix><seq>_time.value`` (seconds per frame). ``prefix`` is empty unless the benchmark's
MATLAB toolkit reads ``<tracker>_<seq>.txt`` (:func:`result_prefix`).

Example:
    >>> results = run_tracker(tracker, seqs, results_dir="results/mytracker")  # doctest: +SKIP
    >>> evaluate_results(seqs, results, protocol="lasher")["SR"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from .datasets import Sequence, decode_text, get_dataset, read_boxes

__all__ = ["TrackerInterface", "SequenceResult", "result_prefix", "run_tracker", "save_result", "load_results"]


class TrackerInterface(Protocol):
    """What :func:`run_tracker` expects of a tracker (a typing protocol; :class:`~srft_peft.tracking.Tracker` is one)."""

    def initialize(self, image: np.ndarray, box_xywh: np.ndarray) -> Any: ...

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]: ...


class SequenceResult(NamedTuple):
    """Result of one sequence: ``(boxes (N, 4), confidences (N,), fps)``."""

    boxes: np.ndarray
    confidences: np.ndarray
    fps: float


def _progress(iterable: Any, enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return iterable
    return tqdm(iterable, **kwargs)


def result_prefix(sequences: SequenceABC[Sequence], tracker_name: str) -> str:
    """``"<tracker_name>_"`` when the toolkit of the sequences' dataset reads ``<tracker>_<seq>.txt``
    (``DatasetRecord.tracker_prefix``: RGBT234, RGBT210, GTOT), else ``""``.

    Example:
        >>> import numpy as np
        >>> seq = Sequence("car", ["0.jpg"], ["0.jpg"], np.ones((1, 4)), dataset="rgbt234")
        >>> result_prefix([seq], "srft"), result_prefix([], "srft")
        ('srft_', '')
    """
    datasets = {s.dataset for s in sequences if s.dataset}
    return f"{tracker_name}_" if any(get_dataset(d).tracker_prefix for d in datasets) else ""


def save_result(results_dir: str | Path, name: str, result: SequenceResult, times: np.ndarray | None = None) -> Path:
    """Write ``<name>.txt``, ``<name>_confidence.value`` (and ``<name>_time.value`` if ``times``) into
    ``results_dir``; returns the box file path."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.txt"
    boxes = np.asarray(result.boxes, dtype=np.float64)
    path.write_text("".join(",".join(f"{v:.4f}" for v in row) + "\n" for row in boxes))
    conf = np.asarray(result.confidences, dtype=np.float64)
    (out / f"{name}_confidence.value").write_text("".join(f"{c:.6f}\n" for c in conf))
    if times is not None:
        (out / f"{name}_time.value").write_text("".join(f"{t:.6f}\n" for t in np.asarray(times, dtype=np.float64)))
    return path


def _read_values(path: Path) -> np.ndarray:
    values = []
    for number, line in enumerate(decode_text(path, path.read_bytes()).splitlines(), start=1):
        line = line.strip()
        if not line:
            values.append(math.nan)  # VOT leaves the initialisation frame empty
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected one number, got {line!r}") from None
    return np.asarray(values, dtype=np.float64)


def load_results(
    results_dir: str | Path, sequences: SequenceABC[Sequence] | SequenceABC[str], prefix: str = ""
) -> dict[str, SequenceResult]:
    """Read result files written by :func:`run_tracker` (or any toolkit-format ``<prefix><seq>.txt``) back.

    Confidences default to NaN and fps to NaN when their files are missing.

    Raises:
        FileNotFoundError: a sequence has no ``<seq>.txt``.
    """
    results_dir = Path(results_dir)
    out: dict[str, SequenceResult] = {}
    for seq in sequences:
        name = seq if isinstance(seq, str) else seq.name
        path = results_dir / f"{prefix}{name}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"no result file for sequence {name!r}: {path}")
        boxes = read_boxes(path, absent_to_nan=False)
        conf_path = results_dir / f"{prefix}{name}_confidence.value"
        conf = _read_values(conf_path) if conf_path.is_file() else np.full(len(boxes), np.nan)
        time_path = results_dir / f"{prefix}{name}_time.value"
        fps = math.nan
        if time_path.is_file():
            times = _read_values(time_path)
            total = float(np.nansum(times))
            fps = float(np.isfinite(times).sum() / total) if total > 0 else math.nan
        out[name] = SequenceResult(boxes, conf, fps)
    return out


def run_tracker(
    tracker: TrackerInterface,
    sequences: SequenceABC[Sequence],
    results_dir: str | Path | None = None,
    progress: bool = True,
    rgb_only: bool = False,
    overwrite: bool = True,
    prefix: str = "",
) -> dict[str, SequenceResult]:
    """One-pass evaluation: initialise on the first frame from the ground truth, then track every frame.

    The initialisation frame (frame 0, or the first visible frame when a sequence starts with the target absent)
    is recorded as its GT box with confidence 1; earlier frames are recorded as ``0,0,0,0`` with confidence 0.
    ``fps`` counts the time spent in ``initialize`` and ``track`` only (not frame decoding).

    Args:
        tracker: object with ``initialize(image, box)`` and ``track(image) -> (box, confidence)``.
        sequences: sequences to run.
        results_dir: if given, write the toolkit-format files there.
        progress: show tqdm progress bars.
        rgb_only: feed ``(H, W, 3)`` RGB frames instead of ``(H, W, 6)`` RGB-X frames.
        overwrite: if False and ``results_dir`` already has ``<prefix><seq>.txt`` of the right length, reuse it.
        prefix: put before each file name (``"<tracker>_"`` where the toolkit needs it: :func:`result_prefix`).

    Returns:
        ``{sequence name: SequenceResult(boxes (N, 4), confidences (N,), fps)}``.
    """
    results: dict[str, SequenceResult] = {}
    sequences = list(sequences)
    bar = _progress(sequences, progress, desc="sequences", unit="seq")
    for seq in bar:
        if results_dir is not None and not overwrite and (Path(results_dir) / f"{prefix}{seq.name}.txt").is_file():
            cached = load_results(results_dir, [seq.name], prefix)[seq.name]
            if len(cached.boxes) == len(seq):
                results[seq.name] = cached
                continue
        n = len(seq)
        boxes = np.zeros((n, 4), dtype=np.float64)
        conf = np.zeros(n, dtype=np.float64)
        times = np.zeros(n, dtype=np.float64)
        start = seq.init_frame
        init_box = seq.get_init_box()
        frames = _progress(range(start, n), progress, desc=seq.name, unit="frame", leave=False)
        for i in frames:
            image = seq.load_frame(i, rgb_only=rgb_only)
            tic = time.perf_counter()
            try:
                if i == start:
                    tracker.initialize(image, init_box.copy())
                    box, score = init_box, 1.0
                else:
                    box, score = tracker.track(image)
            except Exception as err:
                raise RuntimeError(f"tracker failed on sequence {seq.name!r}, frame {i}: {err}") from err
            times[i] = time.perf_counter() - tic
            box = np.asarray(box, dtype=np.float64).reshape(-1)
            if box.shape != (4,):
                raise ValueError(f"tracker.track returned a box of shape {box.shape} on {seq.name!r} frame {i}")
            boxes[i] = box
            conf[i] = float(score)
        total = float(times[start:].sum())
        fps = (n - start) / total if total > 0 else math.inf
        result = SequenceResult(boxes, conf, fps)
        if results_dir is not None:
            save_result(results_dir, prefix + seq.name, result, times)
        results[seq.name] = result
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(fps=f"{fps:.1f}")
    return results
