"""The retained eigenpairs of a Kronecker factor, without a full eigendecomposition where that is cheaper.

The prior keeps only the top ``prior_rank`` eigenpairs of each factor (or the fewest holding ``prior_energy`` of its
trace), so a full float64 ``eigh`` (O(n^3); seconds for n = 3072) mostly computes directions that are thrown away.
:func:`top_eigenpairs` instead runs a block subspace iteration with Rayleigh-Ritz on ``l = 2k`` columns:

1. the iterations run in float32 (a float32 copy of the factor; each is one (n x n) @ (n x l) product, about 3x
   faster than in float64) until the residuals of the k wanted Ritz pairs are below the tolerance or stop improving;
2. the result is then refined and checked in float64: Rayleigh-Ritz against the float64 factor, more float64
   iterations if needed, until every kept pair (theta_i, x_i) satisfies ``||M x_i - theta_i x_i|| <= tol * theta_1``.

Accuracy (``tol`` = :data:`DEFAULT_TOL` = 1e-5): for a symmetric M each kept theta_i is then within tol * lambda_max of
an exact eigenvalue (in practice within ``||r||^2 / gap``, about 1e-7 lambda_max on ViT factors), and each kept vector is
within an angle of about ``tol * lambda_max / gap_i`` of the exact eigenspace; directions whose eigenvalue is itself
near ``tol * lambda_max`` are weakly determined, but their curvature (and so their weight in the penalty) is that small
too. The trace, and with it ``prior_energy`` and the retained-energy fraction, is exact (the sum of the diagonal).

``eigh`` is used instead when it is as cheap or cheaper: small factors (n <= :data:`EIGH_MAX_N`), a block that is not
much smaller than n (``l > n / 4``, e.g. ``prior_rank=None`` or an energy fraction needing many eigenpairs), or an
iteration that has not converged within its budget. The random start is drawn from a generator seeded from the
factor's name and size, so two runs give the same prior.

Example:
    >>> import torch
    >>> M = torch.diag(0.5 ** torch.arange(2000, dtype=torch.float64))
    >>> top = top_eigenpairs(M, rank=3, energy=None, name="w.A")
    >>> top.solver, [round(v, 6) for v in top.values.tolist()], round(top.trace, 6)
    ('subspace', [1.0, 0.5, 0.25], 2.0)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Optional

import torch

from ..config import EIGEN_SOLVERS

DEFAULT_TOL = 1e-5
EIGH_MAX_N = 1024  # below this a float64 eigh costs about as much as the iteration (0.1-0.2 s at n = 768 on one core)
MIN_BLOCK = 16
START_K = 32  # first block when prior_energy decides the count without a rank cap
STALL = 5  # iterations without a smaller residual after which an iteration stops (round-off floor)


@dataclass
class Eigenpairs:
    """The kept eigenpairs of one symmetric positive semi-definite matrix, in descending order.

    ``values`` (k,) and ``vectors`` (n, k) are float64; ``trace`` is the exact trace (the sum of all eigenvalues);
    ``solver`` says which solver produced them ("eigh" or "subspace").
    """

    values: torch.Tensor
    vectors: torch.Tensor
    trace: float
    solver: str


def keep_count(values_desc: torch.Tensor, total: float, rank: Optional[int], energy: Optional[float]) -> int:
    """How many of the leading (descending) eigenvalues to keep: at most ``rank``, and with ``energy`` the fewest whose
    sum holds that fraction of ``total`` (the trace). ``values_desc`` may be only the leading eigenvalues; the result
    is then ``values_desc.numel()`` when they do not yet hold the fraction."""
    k = values_desc.numel() if rank is None else min(rank, values_desc.numel())
    if energy is not None:
        if total > 0:
            cumulative = torch.cumsum(values_desc, 0) / total
            target = torch.tensor(energy - 1e-12, dtype=cumulative.dtype)
            k = min(k, int(torch.searchsorted(cumulative, target).item()) + 1)
        else:
            k = min(k, 1)
    return max(k, 1)


def top_eigenpairs(matrix: torch.Tensor, rank: Optional[int], energy: Optional[float], solver: str = "auto",
                   name: str = "", tol: float = DEFAULT_TOL) -> Eigenpairs:
    """The eigenpairs of ``matrix`` (n x n, symmetric PSD) that the prior keeps under ``rank`` / ``energy``.

    ``solver``: "eigh" (full float64 eigendecomposition), "subspace" (block subspace iteration, falling back to eigh
    only when it does not converge) or "auto" (subspace where it is cheaper, see the module docstring). ``name`` seeds
    the random start. Eigenvalues are clamped at 0.
    """
    if solver not in EIGEN_SOLVERS:
        raise ValueError(f"eigen_solver must be one of {list(EIGEN_SOLVERS)}, got {solver!r}")
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"factor {name!r} must be a square matrix, got shape {tuple(matrix.shape)}")
    M = matrix.double()
    if not math.isfinite(float(M.sum())):  # one reduction: NaN / inf anywhere makes the sum non-finite
        raise ValueError(f"factor {name!r} has non-finite entries (NaN or inf in the calibration statistics)")
    n = M.shape[0]
    trace = float(M.diagonal().sum())
    want = n if rank is None else min(rank, n)
    k = want if energy is None else min(want, START_K)
    if solver != "eigh" and trace > 0:
        generator = torch.Generator().manual_seed(zlib.crc32(f"{name}|{n}".encode()))
        M32: Optional[torch.Tensor] = None
        while solver == "subspace" or (n > EIGH_MAX_N and _block(k) <= n // 4):
            M32 = (matrix if matrix.dtype == torch.float32 else M.float()) if M32 is None else M32
            found = _subspace_iteration(M, M32, k, min(_block(k), n), tol, generator)
            if found is None:
                break
            values, vectors = found
            count = keep_count(values, trace, rank, energy)
            if count < k or k == want:
                return Eigenpairs(values[:count], vectors[:, :count].contiguous(), trace, "subspace")
            k = min(2 * k, want)
    values, vectors = torch.linalg.eigh(M)
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    count = keep_count(values[:want], trace, rank, energy)
    return Eigenpairs(values[:count].clone(), vectors[:, :count].contiguous(), trace, "eigh")


def _block(k: int) -> int:
    """Columns of the iterated block for k wanted eigenpairs (oversampled: convergence goes as lambda_{l+1}/lambda_k)."""
    return k + max(k, MIN_BLOCK)


def _subspace_iteration(M: torch.Tensor, M32: torch.Tensor, k: int, block: int, tol: float,
                        generator: torch.Generator) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The top ``k`` eigenpairs (values, vectors; float64) of float64 ``M`` (``M32``: its float32 copy) with residuals
    <= ``tol`` * theta_1, or None when they have not converged within the budget (about an eigh's cost)."""
    n = M.shape[0]
    budget = max(20, (2 * n) // block)
    start = torch.randn(n, block, generator=generator, dtype=torch.float64).to(M.device)
    Q = torch.linalg.qr(start.float()).Q
    used, Q, _ = _iterate(M32, Q, k, tol, budget)  # float32 phase: a starting block only
    _, _, pairs = _iterate(M, torch.linalg.qr(Q.double()).Q, k, tol, max(budget - used, 1))
    return pairs


def _iterate(M: torch.Tensor, Q: torch.Tensor, k: int, tol: float,
             max_iter: int) -> tuple[int, torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    """Subspace iteration with Rayleigh-Ritz on the orthonormal block ``Q``, in ``M``'s dtype.

    Returns (iterations, Ritz block, pairs): pairs = the k leading Ritz values (clamped at 0) and vectors once their
    residuals ||M x - theta x|| are <= tol * theta_1, else None (out of iterations, or no progress in
    :data:`STALL` iterations: float32 round-off reached).
    """
    best, since_best = float("inf"), 0
    for it in range(1, max_iter + 1):
        Y = M @ Q
        H = Q.T @ Y
        theta, W = torch.linalg.eigh((H + H.T) / 2)
        theta, W = theta.flip(0), W.flip(1)
        X, MX = Q @ W, Y @ W
        residual = float((MX[:, :k] - X[:, :k] * theta[:k]).norm(dim=0).max())
        if residual <= tol * float(theta[0]):
            return it, X, (theta[:k].clamp_min(0), X[:, :k])
        best, since_best = (residual, 0) if residual < best else (best, since_best + 1)
        if since_best >= STALL:
            break
        Q = torch.linalg.qr(MX).Q
    return it, X, None
