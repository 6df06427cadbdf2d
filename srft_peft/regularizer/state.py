"""The engine's resume state: its key names and its validation, in one place.

``SRFTEngine.state_dict()`` is ``{"step", "total_steps", "statistics", "tensors"}``; its tensors are keyed

* ``transfer.v``: the flat EMA of g^2 (own statistics);
* ``transfer.rank_codes.<param>``: the int16 rank-mode damping codes (``transfer.rank_m.<param>``, float, in states
  written before that cache);
* ``anchor.<key>``: the prior term's anchors (see ``PriorTerm.state_tensors``).

A *training* state (:meth:`SRFTEngine.training_state`) adds the prior: ``{"engine": state_dict(), "prior":
prior.to_state()}``. :func:`check_state` validates a state against the regularized parameters before anything is
assigned, so a state of another model changes nothing.

Example:
    >>> import torch
    >>> from srft_peft.targeting import Target
    >>> t = Target("w", torch.nn.Parameter(torch.zeros(2, 3)), "", None, "diagonal")
    >>> check_state({"step": 1, "tensors": {V: torch.zeros(6)}}, [t], None)
    >>> check_state({"step": -1, "tensors": {}}, [t], None)
    Traceback (most recent call last):
    ...
    ValueError: SRFT training state: step must be a non-negative integer, got -1
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..significance.prior import KFACSignificance, PriorSignificance
from ..targeting import Target, calibration_targets
from .lora_term import build_prior_term
from .prior_term import PriorTerm

#: The flat own-statistics buffer v.
V = "transfer.v"
#: Prefix of the int16 rank-mode damping codes of each parameter.
RANK_CODES = "transfer.rank_codes."
#: Prefix of the float rank-mode damping of states written before the int16 cache (read, never written).
RANK_M = "transfer.rank_m."
#: Prefix of the prior term's anchors.
ANCHOR = "anchor."
#: Statistics sources a state may name.
STATISTICS = (None, "own", "optimizer")
WHERE = "SRFT training state"


@dataclass
class TransferSnapshot:
    """The transfer state a significance checkpoint stores: the step, where v comes from, and v per regularized
    parameter (``None`` when the optimizer holds it, e.g. Adam's ``exp_avg_sq``)."""

    step: int
    statistics: Optional[str]
    v: Optional[dict[str, torch.Tensor]]


def is_count(value: Any) -> bool:
    """Whether ``value`` is a non-negative ``int`` (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_prior(targets: Sequence[Target], prior: PriorSignificance, where: str) -> None:
    """Raise ``ValueError`` (prefixed by ``where``) naming the first parameter whose significance does not fit the
    regularized ``targets``: a missing or extra entry, another kind, a shape (the values are checked by
    :meth:`PriorSignificance.from_state`)."""
    if not isinstance(prior, PriorSignificance):
        raise TypeError(f"{where}: expected a PriorSignificance, got {type(prior).__name__}")
    keyed = calibration_targets(list(targets))
    names = {t.name for t in keyed}
    extra = next((n for n in prior.entries if n not in names), None)
    if extra is not None:
        raise ValueError(f"{where}: parameter {extra!r} has a significance but is not regularized by this model")
    for t in keyed:
        e = prior.entries.get(t.name)
        if e is None:
            raise ValueError(f"{where}: parameter {t.name!r} is regularized here but has no significance")
        kind = "kfac" if isinstance(e, KFACSignificance) else "diagonal"
        if kind != t.kind:
            raise ValueError(f"{where}: parameter {t.name!r} is {t.kind!r} here and {kind!r} in the state")
        if isinstance(e, KFACSignificance):
            (m, n), (k_out, k_in) = t.matrix_shape, (e.U.shape[-1], e.V.shape[-1])
            expected = {"U": (m, k_out), "V": (n, k_in), "omega": (k_out, k_in)}
        else:
            expected = {"fisher": tuple(t.param.shape)}
        for key, tensor in e.tensors().items():
            if tuple(tensor.shape) != expected[key]:
                raise ValueError(f"{where}: tensor {key!r} of parameter {t.name!r} has shape {tuple(tensor.shape)}, "
                                 f"expected {expected[key]}")


def expected_tensors(targets: Sequence[Target], term: Optional[PriorTerm]
                     ) -> dict[str, tuple[tuple[int, ...], Optional[torch.dtype]]]:
    """Every tensor a state of these ``targets`` may hold: key -> (shape, dtype; ``None`` = any floating point)."""
    expected: dict[str, tuple[tuple[int, ...], Optional[torch.dtype]]] = {
        V: ((sum(t.param.numel() for t in targets),), None)}
    for t in targets:
        expected[RANK_CODES + t.name] = (tuple(t.param.shape), torch.int16)
        expected[RANK_M + t.name] = (tuple(t.param.shape), None)
    if term is not None:
        expected.update({ANCHOR + k: (tuple(t.shape), None) for k, t in term.state_tensors().items()})
    return expected


def check_state(state: Any, targets: Sequence[Target], term: Optional[PriorTerm],
                prior: Optional[PriorSignificance] = None) -> None:
    """Raise ``ValueError`` naming the key and value unless ``state`` (an ``SRFTEngine.state_dict()``) was written for
    the regularized ``targets``; its anchors are checked against ``term``, or against the term of ``prior`` when given
    (the significance that will be installed first)."""
    if not isinstance(state, dict) or not isinstance(state.get("tensors", {}), dict):
        raise ValueError(f"{WHERE}: expected a dict with 'step' and a 'tensors' dict, got {type(state).__name__}")
    step, total = state.get("step"), state.get("total_steps")
    if not is_count(step):
        raise ValueError(f"{WHERE}: step must be a non-negative integer, got {step!r}")
    if total is not None and (not is_count(total) or total < 1):
        raise ValueError(f"{WHERE}: total_steps must be a positive integer or None, got {total!r}")
    if state.get("statistics") not in STATISTICS:
        raise ValueError(f"{WHERE}: statistics must be 'own', 'optimizer' or None, got {state.get('statistics')!r}")
    if prior is not None:
        check_prior(targets, prior, WHERE)
        term = build_prior_term(list(targets), [t.param for t in targets], [t.name for t in targets], prior)
    expected = expected_tensors(targets, term)
    tensors = state.get("tensors", {})
    anchors = [k for k in expected if k.startswith(ANCHOR)]
    if any(k.startswith(ANCHOR) for k in tensors) and not all(k in tensors for k in anchors):
        missing = next(k for k in anchors if k not in tensors)
        raise ValueError(f"{WHERE}: holds anchors but not {missing!r} (another prior's layout?)")
    for key, t in tensors.items():
        if key not in expected:
            hint = " (no prior significance is set)" if key.startswith(ANCHOR) and term is None else ""
            raise ValueError(f"{WHERE}: tensor {key!r} does not belong to this model's regularized parameters{hint}")
        shape, dtype = expected[key]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{WHERE}: {key!r} must be a tensor, got {type(t).__name__}")
        if dtype is not None and (t.dtype != dtype or tuple(t.shape) != shape):
            raise ValueError(f"{WHERE}: tensor {key!r} must be an {str(dtype).removeprefix('torch.')} tensor of shape "
                             f"{shape}, got {t.dtype} {tuple(t.shape)}")
        if (tuple(t.shape) if key != V else (t.numel(),)) != shape:
            raise ValueError(f"{WHERE}: tensor {key!r} has shape {tuple(t.shape)}, this model needs {shape}")
        if dtype is None and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
            raise ValueError(f"{WHERE}: tensor {key!r} must be finite floating point (dtype {t.dtype})")
        if key == V and bool((t < 0).any()):
            raise ValueError(f"{WHERE}: tensor '{V}' (squared gradients) must be non-negative, its minimum is "
                             f"{float(t.min()):.6g}")


def training_state_prior(state: Any) -> Optional[PriorSignificance]:
    """The prior of a training state ``{"engine": ..., "prior": ...}`` (``None`` without one), validated by
    :meth:`PriorSignificance.from_state`; raises ``ValueError`` unless ``state`` has that form."""
    if not isinstance(state, dict) or "engine" not in state:
        raise ValueError(f"{WHERE}: expected a dict with 'engine' (and 'prior'), got {type(state).__name__}")
    return PriorSignificance.from_state(state["prior"], f"{WHERE} 'prior'") if "prior" in state else None
