"""Tolerances of float32 comparisons, derived from float32 rounding and the reduction size.

Two computations of one float32 quantity by different kernels (another summation order, block size, vector width,
thread split or fused multiply-add; another CPU picks other kernels) differ only by rounding. A sum of ``n`` float32
terms carries an error of at most ``n * eps * sum(|terms|)`` (sequential order, worst case) and typically
``sqrt(n) * eps * sum(|terms|)``: the rounding errors have random signs and add like a random walk, and blocked or
pairwise kernels do better still. :func:`float32_rtol` takes ``sqrt(n)`` with a safety factor of 4 (a 4-sigma bound,
which every element of a test-size tensor meets) and a factor of 2 for the two sides, times ``depth``, the number of
chained reductions whose errors add (layers of a network, a gradient squared counts twice). The bound is relative to
``sum(|terms|)``, not to the result: an element whose terms cancel can have a much larger relative error, so
:func:`assert_close32` also allows that bound times the largest magnitude of the expected tensor as ``atol``.

Example: float32 gradients of a two-block ViT (widths up to 768, about 9 chained matmuls and a square) compared with a
float64 reference: ``float32_rtol(768, depth=18)`` = 4.8e-4, against the 1.4e-5 measured on another CPU.
"""

from __future__ import annotations

import math

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7, the spacing of float32 numbers at 1
SIGMAS = 4.0  # safety factor over the random-walk estimate sqrt(n) * eps


def float32_rtol(reduction_size: int, depth: int = 1) -> float:
    """Relative tolerance of a float32 result computed by two different kernels: ``2 * 4 * eps * sqrt(n) * depth``.

    >>> round(float32_rtol(1), 9), f"{float32_rtol(768, depth=18):.1e}"
    (9.54e-07, '4.8e-04')
    """
    if reduction_size < 1 or depth < 1:
        raise ValueError(f"reduction_size and depth must be >= 1, got {reduction_size!r}, {depth!r}")
    return 2 * SIGMAS * EPS32 * math.sqrt(reduction_size) * depth


def assert_close32(actual: torch.Tensor, expected: torch.Tensor, reduction_size: int, depth: int = 1,
                   msg: str | None = None) -> None:
    """``torch.testing.assert_close`` with the tolerance of :func:`float32_rtol`: ``rtol`` per element and, for
    elements whose terms cancel, ``atol`` = ``rtol`` times the largest magnitude of ``expected`` (the scale of the
    terms). ``actual`` is compared in the dtype of ``expected`` (a float64 reference may be compared with a float32
    result)."""
    rtol = float32_rtol(reduction_size, depth)
    atol = rtol * float(expected.detach().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol, msg=msg)


def adam_trajectory_tolerance(reduction_size: int, depth: int, steps: int, lr: float) -> dict[str, float]:
    """``rtol`` and ``atol`` for parameters after ``steps`` Adam(W) updates whose gradients come from two different
    float32 computations: each gradient is off by ``rtol = float32_rtol(reduction_size, depth)`` relative, and an update
    ``lr * m / sqrt(v)`` by at most ``lr`` times that, so the parameters by ``atol = steps * lr * rtol``.

    >>> tol = adam_trajectory_tolerance(64, depth=16, steps=6, lr=1e-2)
    >>> f"{tol['rtol']:.1e} {tol['atol']:.1e}"
    '1.2e-04 7.3e-06'
    """
    rtol = float32_rtol(reduction_size, depth)
    return {"rtol": rtol, "atol": steps * lr * rtol}
