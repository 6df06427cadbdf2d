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

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from .eigen import top_eigenpairs


@dataclass
class KFACSignificance:
    """Tangent-space significance of one weight matrix.

    ``omega`` holds the raw curvature sigma_i * alpha_j in float64 until :meth:`PriorSignificance.normalize` divides
    every entry by the shared normalizer c (in float64) and stores the result as float32.
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
        # omega stays float64 until PriorSignificance.normalize() divides it by the shared normalizer
        omega = torch.outer(s.values, a.values) + damping
        return cls(name, s.vectors.to(dtype).contiguous(), a.vectors.to(dtype).contiguous(), omega, retained)

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
        """Divide all significances by c = the mean retained K-FAC curvature (the mean diagonal Fisher without any; 1 when
        they are all zero), in float64, and store them as float32.

        Raises ``ValueError`` naming the entry when a significance is not finite (nothing is changed then).
        """
        raw = {name: e.significance_values().double() for name, e in self.entries.items()}
        bad = [name for name, values in raw.items() if not bool(torch.isfinite(values).all())]
        if bad:
            raise ValueError(f"the prior significance of {bad[:5]} is not finite (NaN/inf); nothing was set")
        kfac = [name for name, e in self.entries.items() if isinstance(e, KFACSignificance)]
        pool = [raw[name] for name in (kfac or raw)]
        scale = max((float(v.max()) for v in pool if v.numel()), default=0.0)  # mean of v / scale: no overflow
        count = sum(v.numel() for v in pool)
        c = scale * sum(float((v / scale).sum()) for v in pool) / count if scale > 0 else 1.0
        for name, e in self.entries.items():
            if isinstance(e, KFACSignificance):
                e.omega = (raw[name] / c).float()
            else:
                e.fisher = (raw[name] / c).float()
        self.normalizer, self.normalized = c, True
        return self

    def require_normalized(self) -> None:
        """Raise ``ValueError`` unless the significances are normalized (``normalized=True``): :meth:`normalize` sets
        it; a prior whose scale is meant as it is (e.g. L2-SP's uniform ones) is built with ``normalized=True``.

        Example:
            >>> raw = PriorSignificance({"b": DiagonalSignificance("b", torch.ones(2))})
            >>> raw.require_normalized()  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ValueError: the prior significance is not normalized (normalized=False); call prior.normalize() first, ...
            >>> raw.normalize().require_normalized()
        """
        if not self.normalized:
            raise ValueError("the prior significance is not normalized (normalized=False); call prior.normalize() "
                             "first, or build it with normalized=True if its scale is meant as it is")

    def clipped(self, omega_max: Optional[float]) -> PriorSignificance:
        """This prior with every curvature (``omega``, ``fisher``) above ``omega_max`` set to ``omega_max``: a new prior
        sharing the eigenvectors (``SRFTConfig.omega_max``); ``self`` is unchanged. ``None`` returns ``self``.

        Example:
            >>> prior = PriorSignificance({"b": DiagonalSignificance("b", torch.tensor([0.5, 30.0]))}, normalized=True)
            >>> prior.clipped(10.0).entries["b"].fisher.tolist(), prior.entries["b"].fisher.tolist()
            ([0.5, 10.0], [0.5, 30.0])
        """
        if omega_max is None:
            return self
        if isinstance(omega_max, bool) or not isinstance(omega_max, (int, float)) or not omega_max > 0:
            raise ValueError(f"omega_max must be a positive number or None, got {omega_max!r}")
        entries = {name: dataclasses.replace(e, omega=e.omega.clamp(max=omega_max)) if isinstance(e, KFACSignificance)
                   else dataclasses.replace(e, fisher=e.fisher.clamp(max=omega_max)) for name, e in self.entries.items()}
        return dataclasses.replace(self, entries=entries)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"<param>.<U|V|omega|fisher>": tensor}`` for safetensors."""
        return {f"{name}.{key}": t.contiguous() for name, e in self.entries.items() for key, t in e.tensors().items()}

    def to_state(self) -> dict[str, Any]:
        """The prior as nested dicts of tensors, numbers and strings (``torch.load(weights_only=True)`` reads it back);
        the one serialization of a prior, read by :meth:`from_state`.

        Example:
            >>> prior = PriorSignificance({"b": DiagonalSignificance("b", torch.ones(2))}, normalizer=2.0)
            >>> PriorSignificance.from_state(prior.to_state()).normalizer
            2.0
        """
        entries: dict[str, dict[str, Any]] = {}
        for name, e in self.entries.items():
            if isinstance(e, KFACSignificance):
                entries[name] = {"kind": "kfac", "U": e.U, "V": e.V, "omega": e.omega,
                                 "retained_energy": float(e.retained_energy)}
            else:
                entries[name] = {"kind": "diagonal", "fisher": e.fisher, "source": e.source}
        return {"entries": entries, "normalizer": float(self.normalizer), "num_examples": int(self.num_examples),
                "num_batches": int(self.num_batches), "objective": self.objective, "normalized": bool(self.normalized)}

    @classmethod
    def from_state(cls, state: Any, where: str = "prior state") -> PriorSignificance:
        """The inverse of :meth:`to_state`, validated first: a missing key, a value of the wrong type, a tensor of the
        wrong rank or shape, a non-finite or negative curvature raises ``ValueError`` (``TypeError`` for a state that
        is not a dict) naming ``where``, the key and the value. The tensors are used as they are (not copied)."""
        if not isinstance(state, dict):
            raise TypeError(f"{where}: expected a dict from PriorSignificance.to_state(), got {type(state).__name__}")
        missing = next((k for k in STATE_KEYS if k not in state), None)
        if missing is not None:
            raise ValueError(f"{where}: key {missing!r} is missing (keys: {sorted(map(str, state))})")
        entries, c = state["entries"], state["normalizer"]
        if not isinstance(entries, dict):
            raise ValueError(f"{where}: 'entries' must be a dict of per-parameter records, got {type(entries).__name__}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or c <= 0:
            raise ValueError(f"{where}: 'normalizer' must be a finite positive number, got {c!r}")
        for key in ("num_examples", "num_batches"):
            if isinstance(state[key], bool) or not isinstance(state[key], int) or state[key] < 0:
                raise ValueError(f"{where}: {key!r} must be a non-negative integer, got {state[key]!r}")
        if not isinstance(state["objective"], str) or not isinstance(state["normalized"], bool):
            bad = "objective" if not isinstance(state["objective"], str) else "normalized"
            raise ValueError(f"{where}: {bad!r} must be a {'string' if bad == 'objective' else 'bool'}, "
                             f"got {state[bad]!r}")
        return cls({name: _entry_from_state(name, e, where) for name, e in entries.items()}, normalizer=float(c),
                   num_examples=state["num_examples"], num_batches=state["num_batches"], objective=state["objective"],
                   normalized=state["normalized"])

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


#: Keys of :meth:`PriorSignificance.to_state`.
STATE_KEYS = ("entries", "normalizer", "num_examples", "num_batches", "objective", "normalized")
#: Where a diagonal significance comes from: per-example or per-batch squared gradients, or a uniform (L2-SP) prior.
DIAGONAL_SOURCES = ("per_example", "per_batch", "uniform")
#: Fields of a K-FAC / diagonal entry besides its tensors.
ENTRY_FIELDS = {"kfac": ("U", "V", "omega", "retained_energy"), "diagonal": ("fisher", "source")}


def _entry_from_state(name: Any, e: Any, where: str) -> KFACSignificance | DiagonalSignificance:
    """One validated entry of :meth:`PriorSignificance.from_state`."""
    if not isinstance(name, str):
        raise ValueError(f"{where}: parameter names must be strings, got {name!r}")
    kind = e.get("kind") if isinstance(e, dict) else None
    if kind not in ENTRY_FIELDS:
        raise ValueError(f"{where}: entry of parameter {name!r} needs kind 'kfac' or 'diagonal', got {e!r:.200}")
    missing = next((k for k in ENTRY_FIELDS[kind] if k not in e), None)
    if missing is not None:
        raise ValueError(f"{where}: {kind} entry of parameter {name!r} has no {missing!r}")
    tensors = {k: e[k] for k in ENTRY_FIELDS[kind][:-1]}
    for key, t in tensors.items():
        label = f"{where}: tensor {f'{name}.{key}'!r} of parameter {name!r}"
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{label} must be a tensor, got {type(t).__name__}")
        if kind == "kfac" and t.dim() != 2:
            raise ValueError(f"{label} must be a matrix, got shape {tuple(t.shape)}")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{label} must be finite floating point (dtype {t.dtype})")
        if key in ("omega", "fisher") and bool((t < 0).any()):
            raise ValueError(f"{label} must be non-negative (a curvature), its minimum is {float(t.min()):.6g}")
    if kind == "diagonal":
        if e["source"] not in DIAGONAL_SOURCES:
            raise ValueError(f"{where}: 'source' of parameter {name!r} must be one of {DIAGONAL_SOURCES}, got "
                             f"{e['source']!r}")
        return DiagonalSignificance(name, e["fisher"], e["source"])
    U, V, omega, energy = e["U"], e["V"], e["omega"], e["retained_energy"]
    if tuple(omega.shape) != (U.shape[1], V.shape[1]):
        raise ValueError(f"{where}: tensor {f'{name}.omega'!r} of parameter {name!r} has shape {tuple(omega.shape)}, "
                         f"U and V need {(U.shape[1], V.shape[1])}")
    if isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0.0 <= energy <= 1.0:
        raise ValueError(f"{where}: 'retained_energy' of parameter {name!r} must be in [0, 1], got {energy!r}")
    return KFACSignificance(name, U, V, omega, float(energy))
