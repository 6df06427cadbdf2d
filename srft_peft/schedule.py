"""The schedule kappa(t) that moves SRFT from the prior term to the transfer term.

kappa(t) = kappa_end + (kappa_start - kappa_end) * shape(t / (h T)) with h = kappa_horizon (shape's argument clamped to
[0, 1], so kappa stays at kappa_end after h T); lambda_p(t) = lambda_prior * kappa(t) and
gamma(t) = lambda_transfer * (1 - kappa(t)).

Example:
    >>> from srft_peft import SRFTConfig
    >>> cfg = SRFTConfig(total_steps=100)
    >>> kappa(cfg, 0), round(kappa(cfg, 50), 6), kappa(cfg, 100)
    (1.0, 0.5, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

from .config import SRFTConfig


def shape_value(shape: str, x: float, step_at: float = 0.5) -> float:
    """shape(x) for x = t / T in [0, 1] (clamped): 1 at x = 0 for every shape, 0 at x = 1 except 'constant'."""
    x = min(max(x, 0.0), 1.0)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    if shape == "linear":
        return 1.0 - x
    if shape == "exponential":
        return math.exp(-5.0 * x)
    if shape == "constant":
        return 1.0
    if shape == "step":
        return 1.0 if x < step_at else 0.0
    raise ValueError(f"kappa_shape must be one of cosine, linear, exponential, constant, step, got {shape!r}")


def kappa(config: SRFTConfig, step: int, total_steps: Optional[int] = None) -> float:
    """kappa at optimizer step ``step`` (host-side float: no device sync)."""
    total = total_steps if total_steps is not None else config.total_steps
    if config.kappa_shape == "constant":
        x = 0.0
    else:
        if total is None:
            raise ValueError(
                f"total_steps is needed for kappa_shape={config.kappa_shape!r}: set SRFTConfig(total_steps=...) or "
                "pass srft.attach(optimizer, total_steps=...)"
            )
        x = step / (total * config.kappa_horizon)
    s = shape_value(config.kappa_shape, x, config.kappa_step_at)
    return config.kappa_end + (config.kappa_start - config.kappa_end) * s


def coefficients(config: SRFTConfig, step: int, total_steps: Optional[int] = None) -> tuple[float, float]:
    """(lambda_p(t), gamma(t)) at ``step``."""
    k = kappa(config, step, total_steps)
    return config.lambda_prior * k, config.lambda_transfer * (1.0 - k)


def transfer_share(config: SRFTConfig, lr_factors: Iterable[float], total_steps: Optional[int] = None) -> float:
    """sum_t lr(t) gamma(t) / sum_t lr(t): the share of the learning-rate-weighted update that the transfer term acts
    on, over optimizer steps t = 0, 1, ... with learning-rate factors ``lr_factors`` (one per step).

    The fraction of the update the damping removes is this share times the mean element damping (between
    ``damping_min`` and ``damping_max``). Host-side arithmetic, no tensors.

    Example:
        >>> cfg = SRFTConfig(total_steps=4, kappa_shape="linear")
        >>> transfer_share(cfg, [1.0, 1.0, 1.0, 1.0])  # gamma = 0, 1/4, 1/2, 3/4
        0.375
    """
    weighted = total = 0.0
    for step, lr in enumerate(lr_factors):
        weighted += lr * coefficients(config, step, total_steps)[1]
        total += lr
    if total <= 0.0:
        raise ValueError(f"lr_factors must have a positive sum, got {total!r}")
    return weighted / total
