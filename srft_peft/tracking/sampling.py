"""OSTrack-style training pairs (template crop + jittered search crop) from RGB-X sequences.

Crop geometry (continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``, a box ``x, y, w, h`` covers
``[x, x + w) × [y, y + h)`` and has its centre at ``(x + w / 2, y + h / 2)``):

* template: a square of side ``sqrt(w·h) · template_factor`` (2) centred on the GT box, resized to
  ``template_size`` (128);
* search: the GT box is jittered as in OSTrack — ``(w', h') = (w, h) · exp(ε · scale_jitter)`` with
  ``ε ~ N(0, 1)`` per axis, ``c' = c + sqrt(w'·h') · center_jitter · (u - 0.5)`` with ``u ~ U(0, 1)`` per axis —
  and a square of side ``sqrt(w'·h') · search_factor`` (4) centred on ``c'`` is resized to ``search_size`` (256).
  With the defaults (centre 3, factor 4) the target centre always lies inside the search crop;
* the crop is sampled bilinearly at the exact (sub-pixel) window; outside the image the pixels are 0 (before
  normalisation, as OSTrack's zero padding);
* boxes in a crop are ``((x - x0) / side, (y - y0) / side, w / side, h / side)`` — top-left ``x, y, w, h``
  normalised by the crop side — then clipped to ``[0, 1]`` (the part of the target inside the crop).

Example:
    >>> ds = TrackingPairDataset(seqs, samples_per_epoch=1000, seed=0)  # doctest: +SKIP
    >>> item = ds[0]; item["search"].shape, item["search_box"]  # doctest: +SKIP
    (torch.Size([6, 256, 256]), tensor([0.39, 0.41, 0.22, 0.18]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate

from .datasets import Sequence

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PairSamplingConfig", "TrackingPairDataset", "collate"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class PairSamplingConfig:
    """Parameters of :class:`TrackingPairDataset` (OSTrack defaults)."""

    samples_per_epoch: int = field(default=60000, metadata={"help": "Number of pairs per epoch (dataset length)."})
    template_size: int = field(default=128, metadata={"help": "Side of the template crop in pixels after resizing."})
    search_size: int = field(default=256, metadata={"help": "Side of the search crop in pixels after resizing."})
    template_factor: float = field(default=2.0, metadata={"help": "Template crop side = sqrt(w*h) * this."})
    search_factor: float = field(default=4.0, metadata={"help": "Search crop side = sqrt(w'*h') * this."})
    center_jitter: float = field(default=3.0, metadata={"help": "Search centre jitter factor (OSTrack: 3)."})
    scale_jitter: float = field(default=0.25, metadata={"help": "Search log-scale jitter std (OSTrack: 0.25)."})
    max_gap: int = field(default=200, metadata={"help": "Largest frame gap between template and search frames."})
    rgb_only: bool = field(default=False, metadata={"help": "Use only the RGB channels (C = 3 instead of 6)."})
    seed: int = field(default=0, metadata={"help": "Base seed; item i of epoch e uses the RNG seeded (seed, e, i)."})
    mean: tuple[float, float, float] = field(
        default=IMAGENET_MEAN, metadata={"help": "Per-channel mean (RGB); repeated for the X channels."}
    )
    std: tuple[float, float, float] = field(
        default=IMAGENET_STD, metadata={"help": "Per-channel std (RGB); repeated for the X channels."}
    )

    def __post_init__(self) -> None:
        for name in ("samples_per_epoch", "template_size", "search_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"PairSamplingConfig.{name} must be a positive integer, got {value!r}")
        for name in ("template_factor", "search_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"PairSamplingConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("center_jitter", "scale_jitter"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"PairSamplingConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.max_gap, (int, np.integer)) or self.max_gap < 0:
            raise ValueError(f"PairSamplingConfig.max_gap must be a non-negative integer, got {self.max_gap!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"PairSamplingConfig.mean/std must be 3 values (std > 0), got {self.mean}, {self.std}")


# ----------------------------------------------------------------------------------------------------------------------
# Crop math
# ----------------------------------------------------------------------------------------------------------------------
def _crop_window(box: np.ndarray, factor: float) -> tuple[float, float, float]:
    """Square window ``(x0, y0, side)`` of side ``sqrt(w*h)*factor`` centred on ``box`` (continuous coordinates)."""
    x, y, w, h = (float(v) for v in box)
    side = math.sqrt(w * h) * factor
    return x + w / 2 - side / 2, y + h / 2 - side / 2, side


def _box_in_crop(box: np.ndarray, window: tuple[float, float, float], clip: bool = True) -> np.ndarray:
    """Box ``x, y, w, h`` (image pixels) -> top-left ``x, y, w, h`` normalised by the crop ``window``."""
    x0, y0, side = window
    x, y, w, h = (float(v) for v in box)
    nx1, ny1, nx2, ny2 = (x - x0) / side, (y - y0) / side, (x + w - x0) / side, (y + h - y0) / side
    if clip:
        nx1, ny1, nx2, ny2 = (min(max(v, 0.0), 1.0) for v in (nx1, ny1, nx2, ny2))
    return np.asarray([nx1, ny1, nx2 - nx1, ny2 - ny1], dtype=np.float32)


def _crop_and_resize(image: np.ndarray, window: tuple[float, float, float], out_size: int) -> torch.Tensor:
    """Bilinear crop of ``window = (x0, y0, side)`` from an ``(H, W, C)`` uint8 image -> ``(C, S, S)`` float32 in
    [0, 255]; outside the image the value is 0. Output pixel ``u`` samples the image at the continuous position
    ``x0 + (u + 0.5) * side / S``."""
    x0, y0, side = window
    height, width = image.shape[:2]
    # Only convert the part of the image the window touches (plus a 1-pixel margin for bilinear interpolation).
    ix0 = max(int(math.floor(x0)) - 1, 0)
    iy0 = max(int(math.floor(y0)) - 1, 0)
    ix1 = min(int(math.ceil(x0 + side)) + 1, width)
    iy1 = min(int(math.ceil(y0 + side)) + 1, height)
    channels = image.shape[2]
    if ix1 <= ix0 or iy1 <= iy0:  # window entirely outside the image
        return torch.zeros(channels, out_size, out_size, dtype=torch.float32)
    sub = torch.from_numpy(np.ascontiguousarray(image[iy0:iy1, ix0:ix1])).permute(2, 0, 1)[None].float()
    sub_h, sub_w = iy1 - iy0, ix1 - ix0
    pos = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (side / out_size)
    gx = ((x0 - ix0) + pos) * (2.0 / sub_w) - 1.0  # align_corners=False: -1/+1 are the outer pixel edges
    gy = ((y0 - iy0) + pos) * (2.0 / sub_h) - 1.0
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].float()
    out = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]


# ----------------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------------
class TrackingPairDataset(Dataset):
    """Template/search pairs sampled OSTrack-style ("causal" mode) from a list of sequences.

    For item ``i``: pick a sequence uniformly among those with a visible target, a visible template frame ``t``
    uniformly, then a visible search frame uniformly in ``(t, t + max_gap]`` (``|s - t| <= max_gap`` if there is
    none). The RNG of item ``i`` is seeded with ``(seed, epoch, i)``, so results do not depend on DataLoader workers,
    processes or access order; call :meth:`set_epoch` before each epoch to draw new pairs.

    Each item is a dict of
    ``template`` float32 ``(C, Tz, Tz)``, ``search`` float32 ``(C, Tx, Tx)`` (ImageNet-normalised, C = 6 or 3),
    ``template_box`` and ``search_box`` float32 ``(4,)``: the target box in the crop as top-left ``x, y, w, h``
    normalised to [0, 1] by the crop side.

    Example:
        >>> ds = TrackingPairDataset(seqs, samples_per_epoch=2000, seed=1)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2, collate_fn=collate)  # doctest: +SKIP
    """

    def __init__(
        self, sequences: SequenceABC[Sequence], config: PairSamplingConfig | None = None, **overrides: Any
    ) -> None:
        base = asdict(config) if config is not None else {}
        unknown = set(overrides) - {f.name for f in fields(PairSamplingConfig)}
        if unknown:
            raise TypeError(f"unknown TrackingPairDataset option(s) {sorted(unknown)}")
        self.config = PairSamplingConfig(**{**base, **overrides})
        sequences = list(sequences)
        if not sequences:
            raise ValueError("TrackingPairDataset needs at least one sequence")
        if not self.config.rgb_only:
            rgb = [s.name for s in sequences if s.modality == "rgb"]
            if rgb:
                raise ValueError(f"sequences {rgb[:3]} have modality 'rgb' (no X frames); pass rgb_only=True")
        self.sequences = [s for s in sequences if s.visible.any()]
        if not self.sequences:
            raise ValueError("no sequence has a visible target")
        self._visible = [np.flatnonzero(s.visible) for s in self.sequences]
        channels = 3 if self.config.rgb_only else 6
        self.channels = channels
        self._mean = torch.tensor(self.config.mean * (channels // 3), dtype=torch.float32).view(-1, 1, 1) * 255.0
        self._std = torch.tensor(self.config.std * (channels // 3), dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.epoch = 0

    def __len__(self) -> int:
        return self.config.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose pairs are drawn (part of every item's seed)."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator item ``index`` of the current epoch uses."""
        return np.random.default_rng([int(self.config.seed), self.epoch, int(index)])

    def sample_frames(self, index: int) -> tuple[int, int, int]:
        """``(sequence index, template frame, search frame)`` of item ``index`` in the current epoch."""
        rng = self.rng(index)
        return self._sample_frames(rng)

    def _sample_frames(self, rng: np.random.Generator) -> tuple[int, int, int]:
        k = int(rng.integers(len(self.sequences)))
        vis = self._visible[k]
        t = int(vis[rng.integers(vis.size)])
        cands = vis[(vis > t) & (vis <= t + self.config.max_gap)]
        if cands.size == 0:
            cands = vis[np.abs(vis - t) <= self.config.max_gap]
        s = int(cands[rng.integers(cands.size)])
        return k, t, s

    def jitter_box(self, box: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """OSTrack search-box jitter (see the module docstring for the formula)."""
        cfg = self.config
        wh = np.asarray(box[2:4], dtype=np.float64) * np.exp(rng.standard_normal(2) * cfg.scale_jitter)
        max_offset = math.sqrt(wh[0] * wh[1]) * cfg.center_jitter
        centre = np.asarray(box[:2], dtype=np.float64) + np.asarray(box[2:4]) / 2 + max_offset * (rng.random(2) - 0.5)
        return np.concatenate([centre - wh / 2, wh])

    def _normalise(self, crop: torch.Tensor) -> torch.Tensor:
        return crop.sub_(self._mean).div_(self._std)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        cfg = self.config
        rng = self.rng(index)
        k, t, s = self._sample_frames(rng)
        seq = self.sequences[k]
        t_box, s_box = seq.gt[t], seq.gt[s]
        t_win = _crop_window(t_box, cfg.template_factor)
        s_win = _crop_window(self.jitter_box(s_box, rng), cfg.search_factor)
        template = _crop_and_resize(seq.load_frame(t, rgb_only=cfg.rgb_only), t_win, cfg.template_size)
        search = _crop_and_resize(seq.load_frame(s, rgb_only=cfg.rgb_only), s_win, cfg.search_size)
        return {
            "template": self._normalise(template),
            "search": self._normalise(search),
            "template_box": torch.from_numpy(_box_in_crop(t_box, t_win)),
            "search_box": torch.from_numpy(_box_in_crop(s_box, s_win)),
        }


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items into a batch (PyTorch's default collate)."""
    return default_collate(batch)
