"""Small pieces shared by RGB pretraining and RGB-X fine-tuning: seeding, threads, the learning-rate shape, progress
bars and the tracking loss of a batch of pairs."""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..sampling import collate

__all__ = ["ce_keep_ratio_at", "collate_rgb_as_rgbx", "configure_threads", "cosine_lr_lambda", "lr_lambda", "pair_loss",
           "progress_bar", "rgb_as_rgbx", "set_seed", "step_lr_lambda", "to_device"]


def progress_bar(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar (disabled unless ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, **kwargs)


def cosine_lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``step``: linear warm-up over ``warmup`` steps, then cosine decay to 0 at
    ``total`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def step_lr_lambda(warmup: int, total: int, drop_at: float, factor: float) -> Callable[[int], float]:
    """The learning-rate factor of step ``step`` under OSTrack's step schedule: linear warm-up over ``warmup`` steps,
    then 1, times ``factor`` from step ``round(drop_at * total)`` on (OSTrack: ``StepLR`` by 0.1 at epoch 240 of 300).

    Example:
        >>> fn = step_lr_lambda(0, 100, 0.8, 0.1)
        >>> fn(79), fn(80)
        (1.0, 0.1)
    """
    drop = round(drop_at * total)

    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return factor if step >= drop else 1.0

    return fn


def lr_lambda(schedule: str, warmup: int, total: int, drop_at: float = 0.8, factor: float = 0.1) -> Callable[[int], float]:
    """:func:`cosine_lr_lambda` (``schedule="cosine"``) or :func:`step_lr_lambda` (``"step"``)."""
    if schedule == "cosine":
        return cosine_lr_lambda(warmup, total)
    if schedule == "step":
        return step_lr_lambda(warmup, total, drop_at, factor)
    raise ValueError(f"schedule must be 'cosine' or 'step', got {schedule!r}")


def ce_keep_ratio_at(step: int, total: int, start_fraction: float, warm_fraction: float,
                     ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Candidate-elimination keep ratios at optimizer step ``step`` of ``total`` under OSTrack-CE's warm-up
    (``lib/utils/ce_utils.py``, ``adjust_keep_rate``): 1 (every token kept) before ``start = start_fraction * total``,
    ``ratios`` from ``start + warm_fraction * total`` on, and in between each ratio r rises back along half a cosine,
    ``r + (1 - r) (1 + cos(pi (step - start) / warm)) / 2``.

    Example:
        >>> ce_keep_ratio_at(0, 300, 20 / 300, 80 / 300, (0.7,)), ce_keep_ratio_at(60, 300, 20 / 300, 80 / 300, (0.7,))
        ((1.0,), (0.85,))
    """
    start, warm = start_fraction * total, warm_fraction * total
    if step < start:
        return tuple(1.0 for _ in ratios)
    if step >= start + warm:
        return tuple(ratios)
    keep = (1.0 + math.cos(math.pi * (step - start) / warm)) / 2
    return tuple(r + (1.0 - r) * keep for r in ratios)


def configure_threads(num_threads: int | None, device: torch.device) -> None:
    """``torch.set_num_threads(num_threads)``; by default 1 on the CPU when ``OMP_NUM_THREADS`` is unset: the small
    tracker's ops are too small to gain from several intra-op threads, which only contend (several-fold slower) on a
    busy machine or with several processes."""
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def rgb_as_rgbx(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RGB pairs (C = 3) -> RGB-X pairs with X := RGB (C = 6)."""
    out = dict(batch)
    for key in ("template", "search"):
        if out[key].shape[1] == 3:
            out[key] = torch.cat([out[key], out[key]], dim=1)
    return out


def collate_rgb_as_rgbx(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return rgb_as_rgbx(collate(items))


def pair_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tracking loss of ``model`` on a batch of template/search pairs."""
    return model(batch["template"], batch["search"], search_box=batch["search_box"]).loss
