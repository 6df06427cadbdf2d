"""OSTrack's photometric and flip augmentations of a training pair, drawn per pair from the pair's own RNG.

OSTrack (``lib/train/base_functions.py``, ``lib/train/data/transforms.py``; ViPT keeps them) applies, per pair:

* grayscale with probability 0.05 and a horizontal flip with probability 0.5, the same for template and search
  (its *joint* transform, on the full frames);
* then, for the template crop and the search crop each on its own: a brightness factor drawn uniformly from
  ``[max(0, 1 - 0.2), 1 + 0.2]`` (pixels multiplied, clamped to the 0..255 range) and another horizontal flip with
  probability 0.5.

Here every step acts on the crop (flipping a crop is flipping the frame and the crop window, and the gray conversion is
linear, so it commutes with the bilinear crop up to uint8 rounding): a crop is flipped when exactly one of the joint
flip and its own flip was drawn, as in OSTrack, where the second flip undoes the first. The same flip applies to every
channel (RGB and X) and to the box; gray replaces the RGB channels by their luma (BT.601 weights, those of OpenCV's
``COLOR_RGB2GRAY``) and leaves X as it is; the brightness factor scales all channels of the crop.

Example:
    >>> rng = np.random.default_rng(0)
    >>> aug = draw_pair_augmentation(rng, flip_prob=0.5, crop_flip_prob=0.5, gray_prob=0.05, brightness_jitter=0.2)
    >>> len(aug.flip), 0.8 <= aug.brightness[0] <= 1.2
    (2, True)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["GRAY_WEIGHTS", "PairAugmentation", "draw_pair_augmentation", "flip_crop", "adjust_pixels"]

#: Luma weights of R, G, B (ITU-R BT.601, as OpenCV's RGB -> gray conversion).
GRAY_WEIGHTS = (0.299, 0.587, 0.114)


class PairAugmentation(NamedTuple):
    """What one pair gets: ``gray`` (both crops), ``flip`` and ``brightness`` per crop (template, search)."""

    gray: bool
    flip: tuple[bool, bool]
    brightness: tuple[float, float]


def draw_pair_augmentation(rng: np.random.Generator, flip_prob: float, crop_flip_prob: float, gray_prob: float,
                           brightness_jitter: float) -> PairAugmentation | None:
    """Draw a pair's augmentation; None (and nothing drawn from ``rng``) when every setting is 0."""
    if not (flip_prob or crop_flip_prob or gray_prob or brightness_jitter):
        return None
    gray = bool(gray_prob > 0 and rng.random() < gray_prob)
    joint_flip = bool(flip_prob > 0 and rng.random() < flip_prob)
    flips, factors = [], []
    for _ in range(2):  # template, search
        low = max(0.0, 1.0 - brightness_jitter)
        factors.append(float(rng.uniform(low, 1.0 + brightness_jitter)) if brightness_jitter > 0 else 1.0)
        own_flip = bool(crop_flip_prob > 0 and rng.random() < crop_flip_prob)
        flips.append(joint_flip != own_flip)
    return PairAugmentation(gray, (flips[0], flips[1]), (factors[0], factors[1]))


def adjust_pixels(crop: torch.Tensor, gray: bool, brightness: float) -> torch.Tensor:
    """Gray (RGB channels -> luma) then brightness (all channels, clamped to [0, 255]) of a raw crop (C, S, S) with
    values in 0..255, in place; returns it."""
    if gray:
        w = torch.tensor(GRAY_WEIGHTS, dtype=crop.dtype, device=crop.device).view(3, 1, 1)
        crop[:3] = (crop[:3] * w).sum(dim=0, keepdim=True)
    if brightness != 1.0:
        crop.mul_(brightness).clamp_(0.0, 255.0)
    return crop


def flip_crop(crop: torch.Tensor, box: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """Mirror a crop (..., S, S) left-right and its box (x, y, w, h normalised by the crop side): x -> 1 - x - w."""
    x, y, w, h = box
    return crop.flip(-1), np.array([1.0 - x - w, y, w, h], dtype=box.dtype)
