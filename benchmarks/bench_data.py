"""Throughput of the training data path (TrackingPairDataset) against its floor: the four JPEG decodes of a pair.

A pair is a template (128) and a search (256) crop, RGB and thermal, so it decodes four frames; everything else
(sampling, cropping both modalities with one window, normalisation) is overhead on top of that floor. The script
prints, on the same frames and in the same run:

* floor: the four decodes of each pair with the decoder the data path uses (and PIL's, for reference);
* the data path in the main process (one thread, CPU time, alternating with the floor on the same pairs so that
  the load of a shared machine hits both alike), and the previous path (PIL decode, both full frames stacked into one
  6-channel array before cropping) as a baseline;
* DataLoader throughput with 1 and 2 workers (pairs/s in total and per worker, worker start-up excluded);
* ratio = floor time / pair time (1.0 = the pair costs no more than its decodes; the target is >= 0.8).

With no --root it writes a LasHeR-format folder of 640x480 JPEG frames (quality 90: smooth noise, texture and moving
shapes; <seq>/visible/v*.jpg, <seq>/infrared/i*.jpg, visible.txt / infrared.txt) to a temporary folder.

    python benchmarks/bench_data.py                       # synthetic LasHeR-format folder, 4 sequences x 50 frames
    python benchmarks/bench_data.py --root /data/LasHeR/trainingset --pairs 400 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from srft_peft.tracking import datasets
from srft_peft.tracking.crops import crop_tensor
from srft_peft.tracking.datasets import load_lasher
from srft_peft.tracking.sampling import TrackingPairDataset, collate


def _frame(rng: np.random.Generator, box: np.ndarray, thermal: bool) -> Image.Image:
    """A 640x480 frame: smooth noise (upsampled), fine texture, a few rectangles/ellipses and the target."""
    base = Image.fromarray((rng.random((12, 16, 3)) * 255).astype(np.uint8)).resize((640, 480), Image.BICUBIC)
    pixels = np.asarray(base, dtype=np.float32) + rng.normal(0.0, 6.0, (480, 640, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x, y = rng.integers(0, 600), rng.integers(0, 440)
        w, h = rng.integers(10, 120, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x, y, x + w, y + h], fill=colour)
    x, y, w, h = box
    draw.ellipse([x, y, x + w, y + h], fill=(250, 240, 230))
    return image.convert("L").convert("RGB") if thermal else image


def make_lasher_folder(root: Path, sequences: int = 4, frames: int = 50, seed: int = 0) -> Path:
    """A LasHeR-format training folder of 640x480 JPEG frames (quality 90) under ``root``."""
    rng = np.random.default_rng(seed)
    for s in range(sequences):
        seq = root / f"seq{s:02d}"
        (seq / "visible").mkdir(parents=True, exist_ok=True)
        (seq / "infrared").mkdir(exist_ok=True)
        size = rng.uniform(30, 90, 2)
        centre = rng.uniform([100, 100], [540, 380])
        velocity = rng.normal(0, 3, 2)
        boxes = []
        for i in range(frames):
            centre = np.clip(centre + velocity, size / 2, [640, 480] - size / 2)
            box = np.concatenate([centre - size / 2, size])
            boxes.append(box)
            _frame(rng, box, thermal=False).save(seq / "visible" / f"v{i + 1:06d}.jpg", quality=90)
            _frame(rng, box, thermal=True).save(seq / "infrared" / f"i{i + 1:06d}.jpg", quality=90)
        lines = "".join(",".join(f"{v:.0f}" for v in b) + "\n" for b in boxes)
        (seq / "visible.txt").write_text(lines)
        (seq / "infrared.txt").write_text(lines)
    return root


def _stacked_item(ds: TrackingPairDataset, index: int) -> None:
    """The previous data path: both modalities decoded by PIL and stacked into one (H, W, 6) frame, then cropped."""
    cfg, rng = ds.config, ds.rng(index)
    k, t, s = ds._sample_frames(rng)
    seq = ds.sequences[k]
    norm = {"mean": cfg.mean, "std": cfg.std}
    crop_tensor(seq.load_frame(t), seq.gt[t], cfg.template_factor, cfg.template_size, **norm)
    crop_tensor(seq.load_frame(s), ds.jitter_box(seq.gt[s], rng), cfg.search_factor, cfg.search_size, **norm)


def _bare_decode(path: Path) -> object:
    """The decoder alone, as the data path calls it (no checks, no array conversion)."""
    if datasets._DECODE_JPEG is None:
        return _pil_decode(path)
    from torchvision.io import ImageReadMode, decode_jpeg, read_file

    return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)


def _pil_decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _cpu_time_per_pair(fns: dict[str, object], pairs: int, chunk: int = 10) -> dict[str, float]:
    """CPU seconds per pair of every ``fns[name](i)``, measured on the same pairs in alternating chunks of ``chunk``
    pairs (process CPU time: what the work costs one core, whatever else the machine runs meanwhile)."""
    spent = dict.fromkeys(fns, 0.0)
    for start in range(0, pairs, chunk):
        for name, fn in fns.items():
            tic = time.process_time()
            for i in range(start, min(start + chunk, pairs)):
                fn(i)
            spent[name] += time.process_time() - tic
    return {name: value / pairs for name, value in spent.items()}


def _loader_rate(ds: TrackingPairDataset, workers: int, pairs: int, batch: int) -> float:
    """Pairs/s of a DataLoader with ``workers`` workers, after its first batch (worker start-up excluded)."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)
    tic = time.perf_counter()
    seen = 0
    for b in it:
        seen += b["search"].shape[0]
        if seen >= pairs:
            break
    return seen / (time.perf_counter() - tic)


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    return f"{fmt.format(statistics.median(values))} (min {fmt.format(min(values))}, max {fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="LasHeR-format training folder (default: synthetic)")
    parser.add_argument("--sequences", type=int, default=4, help="synthetic folder: sequences")
    parser.add_argument("--frames", type=int, default=50, help="synthetic folder: frames per sequence")
    parser.add_argument("--pairs", type=int, default=200, help="pairs per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every measurement (median, min, max)")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="DataLoader worker counts")
    parser.add_argument("--batch-size", type=int, default=8, help="DataLoader batch size")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # torchvision >= 0.29 on every decode_jpeg call
    torch.set_num_threads(1)  # one core: the floor, the main process and every worker alike

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or make_lasher_folder(Path(tmp), args.sequences, args.frames)
        ds = TrackingPairDataset(load_lasher(root), samples_per_epoch=max(args.pairs * 4, 64), seed=0,
                                 template_size=128, search_size=256)
        files = []
        for i in range(args.pairs):
            k, t, s = ds.sample_frames(i)
            seq = ds.sequences[k]
            files.append([seq.frames_rgb[t], seq.frames_x[t], seq.frames_rgb[s], seq.frames_x[s]])
        decoder = "torchvision.io.decode_jpeg" if datasets._DECODE_JPEG is not None else "PIL"
        rows: dict[str, list[float]] = {k: [] for k in ("floor", "floor_pil", "main", "stacked")}
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        fast = datasets._DECODE_JPEG

        def stacked(i: int) -> None:  # the previous path decoded with PIL
            datasets._DECODE_JPEG = None
            try:
                _stacked_item(ds, i)
            finally:
                datasets._DECODE_JPEG = fast

        fns = {"floor": lambda i: [_bare_decode(f) for f in files[i]],
               "floor_pil": lambda i: [_pil_decode(f) for f in files[i]],
               "main": ds.__getitem__, "stacked": stacked}
        for _ in range(args.repeats):
            for name, value in _cpu_time_per_pair(fns, args.pairs).items():
                rows[name].append(value)
            for w in args.workers:
                rates[w].append(_loader_rate(ds, w, args.pairs, args.batch_size))

    ms = {k: [v * 1e3 for v in vals] for k, vals in rows.items()}
    print(f"{len(ds.sequences)} sequences, 640x480 JPEG, {args.pairs} pairs x {args.repeats} repeats, decoder: {decoder}")
    print("median (min, max) over the repeats; main-process rows: CPU time per pair (one thread), workers: wall clock")
    print(f"floor: 4 decodes per pair      {_spread(ms['floor'], '{:.2f}')} ms  = "
          f"{_spread([1e3 / v for v in ms['floor']])} pairs/s")
    print(f"  (PIL: 4 decodes per pair     {_spread(ms['floor_pil'], '{:.2f}')} ms)")
    print(f"main process (1 thread)        {_spread(ms['main'], '{:.2f}')} ms  = "
          f"{_spread([1e3 / v for v in ms['main']])} pairs/s")
    print(f"previous path (PIL + stacked)  {_spread(ms['stacked'], '{:.2f}')} ms  = "
          f"{_spread([1e3 / v for v in ms['stacked']])} pairs/s")
    print(f"ratio floor / pair, main process: {_spread([f / m for f, m in zip(ms['floor'], ms['main'])], '{:.2f}')}"
          f"   (previous path: {_spread([f / m for f, m in zip(ms['floor'], ms['stacked'])], '{:.2f}')})")
    for w, values in rates.items():
        per_worker = [v / w for v in values]
        ratio = [r * f / 1e3 for r, f in zip(per_worker, ms["floor"])]
        print(f"{w} worker(s): {_spread(values)} pairs/s, per worker {_spread(per_worker)}, "
              f"ratio per worker / floor {_spread(ratio, '{:.2f}')}")


if __name__ == "__main__":
    main()
