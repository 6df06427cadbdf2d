"""OSTrack-style training pairs (template crop + jittered search crop) from RGB-X sequences.

Crop geometry (continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``, a box ``x, y, w, h`` covers
``[x, x + w) × [y, y + h)`` and has its centre at ``(x + w / 2, y + h / 2)``):

* template: a square of side ``sqrt(w·h) · template_factor`` (2) centred on the GT box, resized to
  ``template_size`` (128);
* search: the GT box is jittered as in OSTrack — ``(w', h') = (w, h) · exp(ε · scale_jitter)`` with
  ``ε ~ N(0, 1)`` per axis, ``c' = c + sqrt(w'·h') · center_jitter · (u - 0.5)`` with ``u ~ U(0, 1)`` per axis —
  and a square of side ``sqrt(w'·h') · search_factor`` (4) centred on ``c'`` is resized to ``search_size`` (256).
  With the defaults (centre 3, factor 4) the target centre always lies inside the search crop;
* the crop is :func:`~srft_peft.tracking.crops.crop_tensor` — the function the
  :class:`~srft_peft.tracking.tracker.Tracker` uses at inference: sampled bilinearly at the exact (sub-pixel) window,
  0 outside the image (before normalisation, as OSTrack's zero padding);
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
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .augment import adjust_pixels, draw_pair_augmentation, flip_crop
from .crops import IMAGENET_MEAN, IMAGENET_STD, box_in_window, crop_tensor
from .datasets import Sequence

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PairSamplingConfig", "TrackingPairDataset", "collate"]

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
    flip_prob: float = field(
        default=0.0, metadata={"help": "Horizontal flip of template and search together (OSTrack: 0.5); see "
                               "srft_peft.tracking.augment. 0 = off."})
    crop_flip_prob: float = field(
        default=0.0, metadata={"help": "A further horizontal flip of each crop on its own (OSTrack: 0.5). 0 = off."})
    gray_prob: float = field(
        default=0.0, metadata={"help": "RGB channels of both crops to gray (OSTrack: 0.05). 0 = off."})
    brightness_jitter: float = field(
        default=0.0, metadata={"help": "Each crop's pixels times a factor uniform in [max(0, 1 - b), 1 + b] (OSTrack: "
                               "0.2). 0 = off."})
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
        for name in ("flip_prob", "crop_flip_prob", "gray_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"PairSamplingConfig.{name} must be a probability in [0, 1], got {value!r}")
        b = self.brightness_jitter
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < float("inf"):
            raise ValueError(f"PairSamplingConfig.brightness_jitter must be a finite number >= 0, got {b!r}")
        if not isinstance(self.max_gap, (int, np.integer)) or self.max_gap < 0:
            raise ValueError(f"PairSamplingConfig.max_gap must be a non-negative integer, got {self.max_gap!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"PairSamplingConfig.mean/std must be 3 values (std > 0), got {self.mean}, {self.std}")


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
    normalised to [0, 1] by the crop side. With ``flip_prob`` / ``crop_flip_prob`` / ``gray_prob`` /
    ``brightness_jitter`` the crops get OSTrack's augmentations (:mod:`srft_peft.tracking.augment`), drawn from the
    item's RNG after the frames and the jitter (all 0, the default: nothing is drawn, the pairs are unchanged).

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
        self.channels = 3 if self.config.rgb_only else 6
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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        cfg = self.config
        rng = self.rng(index)
        k, t, s = self._sample_frames(rng)
        seq = self.sequences[k]
        t_box, s_box = seq.gt[t], seq.gt[s]
        s_jittered = self.jitter_box(s_box, rng)
        aug = draw_pair_augmentation(rng, cfg.flip_prob, cfg.crop_flip_prob, cfg.gray_prob, cfg.brightness_jitter)
        item = {}
        # The same crop function (sub-pixel window, bilinear, zero padding, normalisation) as the Tracker's.
        # Each modality is cropped with the same window (Sequence.load_images: no full-frame 6-channel stack).
        for j, (name, frame, box, crop_box, factor, size) in enumerate((
                ("template", t, t_box, t_box, cfg.template_factor, cfg.template_size),
                ("search", s, s_box, s_jittered, cfg.search_factor, cfg.search_size))):
            pixels = None if aug is None else partial(adjust_pixels, gray=aug.gray, brightness=aug.brightness[j])
            crop, window = crop_tensor(seq.load_images(frame, rgb_only=cfg.rgb_only), crop_box, factor, size,
                                       mean=cfg.mean, std=cfg.std, transform=pixels)
            box_in_crop = box_in_window(box, window, clip=True)
            if aug is not None and aug.flip[j]:
                crop, box_in_crop = flip_crop(crop, box_in_crop)
            item[name] = crop
            item[f"{name}_box"] = torch.from_numpy(box_in_crop.astype(np.float32))
        return {key: item[key] for key in ("template", "search", "template_box", "search_box")}


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items into a batch (PyTorch's default collate)."""
    return default_collate(batch)
