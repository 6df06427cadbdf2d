"""Prior-significance containers: per-matrix tangent directions (K-FAC) and per-element diagonal Fisher.

For a weight W (m x n) with Kronecker factors A = E[a a^T] (inputs) and S = E[g g^T] (output gradients):
A = Q_A diag(alpha) Q_A^T, S = Q_S diag(sigma) Q_S^T, U = Q_S[:, :k_out], V = Q_A[:, :k_in], omega_ij = sigma_i alpha_j / c.
The penalty is R(W) = 1/2 || sqrt(omega) * (U^T dW V) ||_F^2.

Example:
    >>> import torch
    >>> sig = KFACSignificance.from_factors("w", torch.eye(3), torch.eye(2), rank=1, energy=None)
    >>> sig.U.shape, sig.V.shape, sig.omega.shape
    (torch.Size([2, 1]), torch.Size([3, 1]), torch.Size([1, 1]))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .eigen import top_eigenpairs


@dataclass
class KFACSignificance:
    """Tangent-space significance of one weight matrix.

    ``omega`` holds the raw curvature sigma_i * alpha_j until :meth:`PriorSignificance.normalize` divides every entry by
    the shared normalizer c.
    """

    name: str
    U: torch.Tensor  # (m, k_out) output-side eigenvectors
    V: torch.Tensor  # (n, k_in) input-side eigenvectors
    omega: torch.Tensor  # (k_out, k_in)
    retained_energy: float = 1.0
    kind: str = field(default="kfac", init=False)

    @classmethod
    def from_factors(cls, name: str, A: torch.Tensor, S: torch.Tensor, rank: Optional[int], energy: Optional[float],
                     damping: float = 0.0, dtype: torch.dtype = torch.float32,
                     solver: str = "auto") -> KFACSignificance:
        """Keep the steepest eigen-directions of A (n x n) and S (m x m), computed in float64 by
        :func:`~srft_peft.significance.eigen.top_eigenpairs` (``solver``: "auto", "eigh" or "subspace")."""
        a = top_eigenpairs(A, rank, energy, solver, f"{name}.A")
        s = top_eigenpairs(S, rank, energy, solver, f"{name}.S")
        total = s.trace * a.trace
        retained = min(float(s.values.sum() * a.values.sum() / total), 1.0) if total > 0 else 1.0
        omega = torch.outer(s.values, a.values) + damping
        return cls(name, s.vectors.to(dtype).contiguous(), a.vectors.to(dtype).contiguous(), omega.to(dtype), retained)

    @property
    def rank(self) -> tuple[int, int]:
        return self.U.shape[1], self.V.shape[1]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"U": self.U, "V": self.V, "omega": self.omega}

    def significance_values(self) -> torch.Tensor:
        return self.omega


@dataclass
class DiagonalSignificance:
    """Diagonal empirical Fisher of one parameter; ``source`` is 'per_example' or 'per_batch'."""

    name: str
    fisher: torch.Tensor
    source: str = "per_example"
    kind: str = field(default="diagonal", init=False)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"fisher": self.fisher}

    def significance_values(self) -> torch.Tensor:
        return self.fisher


@dataclass
class PriorSignificance:
    """The prior significance of every regularized parameter, normalized by one shared constant ``normalizer``.

    Example:
        >>> import torch
        >>> prior = PriorSignificance({"b": DiagonalSignificance("b", torch.tensor([1.0, 3.0]))})
        >>> prior.normalize().normalizer, prior.entries["b"].fisher.tolist()
        (2.0, [0.5, 1.5])
    """

    entries: dict[str, KFACSignificance | DiagonalSignificance]
    normalizer: float = 1.0
    num_examples: int = 0
    num_batches: int = 0
    objective: str = ""
    normalized: bool = False

    def normalize(self) -> PriorSignificance:
        """Divide all significances by c = the mean retained K-FAC curvature (the mean diagonal Fisher without any)."""
        kfac = [e for e in self.entries.values() if isinstance(e, KFACSignificance)]
        pool = kfac if kfac else list(self.entries.values())
        total = sum(float(e.significance_values().double().sum()) for e in pool)
        count = sum(e.significance_values().numel() for e in pool)
        c = total / count if count and total > 0 else 1.0
        for e in self.entries.values():
            if isinstance(e, KFACSignificance):
                e.omega = e.omega / c
            else:
                e.fisher = e.fisher / c
        self.normalizer, self.normalized = c, True
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<param>.<U|V|omega|fisher>": tensor}`` for safetensors."""
        return {f"{name}.{key}": t.contiguous() for name, e in self.entries.items() for key, t in e.tensors().items()}

    def summary_rows(self) -> list[dict]:
        """One row per parameter: kind, rank, retained energy, mean/max significance, parameters covered."""
        rows = []
        for name, e in self.entries.items():
            values = e.significance_values().float()
            if isinstance(e, KFACSignificance):
                m, n = e.U.shape[0], e.V.shape[0]
                rows.append(dict(name=name, kind="kfac", rank=f"{e.rank[0]}x{e.rank[1]}",
                                 retained_energy=e.retained_energy, mean=float(values.mean()),
                                 max=float(values.max()), parameters=m * n, source="kfac"))
            else:
                rows.append(dict(name=name, kind="diagonal", rank="-", retained_energy=1.0, mean=float(values.mean()),
                                 max=float(values.max()), parameters=values.numel(), source=e.source))
        return rows
