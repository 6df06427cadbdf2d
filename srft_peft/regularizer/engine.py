"""`SRFTEngine`: runs the regularizer around each optimizer step.

Before ``optimizer.step()`` (after unscaling, clipping and gradient synchronization):
    1. grad += lambda_p(t) grad R_prior            (``apply="grad"``; fused, no autograd; skipped for the gradients
                                                    that `SRFTEngine.add_prior_gradient` already received)
    2. v <- beta v + (1 - beta) g^2                 (own statistics; skipped on non-finite gradients, no host sync)
    3. theta_prev <- theta                          (only while gamma(t) > 0)
After it:
    4. theta <- theta - gamma(t) m (theta - theta_prev)
    5. t <- t + 1

An optimizer step that a GradScaler skips calls neither hook, so it changes no statistic and no counter. Fused or
capturable optimizers (``_step_supports_amp_scaling``, e.g. ``AdamW(fused=True)``) are the exception: GradScaler calls
their ``step()`` on every step, with the gradients still scaled and an inf flag; the hooks read ``grad_scale`` and
``found_inf`` from the optimizer, work on unscaled values and treat a flagged step as skipped.
State and arithmetic are float32 whatever the parameters' dtype, with autocast disabled: bf16/fp16 weights are cast
once per step into a float32 buffer (allocated once) for U^T W V - P0, that buffer also holds the snapshot
theta_{t-1} (exact: every bf16/fp16 value is a float32), and the parameters only receive the results (the prior
gradient added to ``.grad``, the damping). SRFT's tensors follow the parameters' device (see `follow_parameters`).
All per-element state lives in flat buffers (see `layout`); the hot path is a fixed number of ``_foreach`` ops and one
batched matmul per group of same-shaped matrices, with no ``.item()`` (except reading a fused optimizer's inf flag).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Optional

import torch

from ..config import SRFTConfig
from ..schedule import coefficients, kappa
from ..significance.prior import PriorSignificance
from ..targeting import Target
from .layout import STATE_DTYPE, FlatLayout
from .lora_term import build_prior_term
from .prior_term import PriorTerm
from .transfer import RANK_LEVELS, TransferTerm, ema_update_


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside wrappers such as accelerate's ``AcceleratedOptimizer``.

    The wrapper may itself subclass ``torch.optim.Optimizer`` (accelerate's does, without its hook tables, and its
    ``step()`` runs on every micro-batch): descend while there is an inner ``.optimizer``.
    """
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer) or (
            not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer")):
        inner = inner.optimizer
    if not isinstance(inner, torch.optim.Optimizer):
        raise TypeError(f"attach() needs a torch.optim.Optimizer (or a wrapper with .optimizer), got "
                        f"{type(optimizer).__name__}")
    return inner


#: The engines attached to each optimizer (to refuse two attachments that would regularize one parameter twice).
_ATTACHED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _without_autocast(fn: Any) -> Any:
    """Run an engine method with autocast off on the parameters' device (after following them there if they moved):
    under bf16/fp16 autocast, U^T W V - P0 would be computed in half precision and cancel catastrophically."""

    @functools.wraps(fn)
    def wrapper(self: SRFTEngine, *args: Any, **kwargs: Any) -> Any:
        if self.params[0].device != self.layout.device:  # the model was moved without SRFTModel.to (e.g. the base)
            self.follow_parameters()
        with torch.autocast(self.layout.device.type, enabled=False):
            return fn(self, *args, **kwargs)

    return wrapper


def amp_step_state(optimizer: torch.optim.Optimizer) -> tuple[bool, Optional[torch.Tensor]]:
    """(skipped, grad_scale) of a step that a GradScaler hands to an optimizer with ``_step_supports_amp_scaling``.

    Such optimizers (fused/capturable Adam, AdamW, SGD, Adagrad) unscale and skip inside their kernel, so GradScaler
    calls ``step()`` even when it found an inf, with ``optimizer.found_inf`` set and, unless ``unscale_`` ran first,
    ``optimizer.grad_scale`` set and the gradients still scaled. Reading the flag costs one host sync, on this path
    only (GradScaler's ordinary path syncs on it anyway).
    """
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False, None
    found_inf = getattr(optimizer, "found_inf", None)
    skipped = found_inf is not None and bool(found_inf.item())
    return skipped, getattr(optimizer, "grad_scale", None)


def scaler_state(scaler: Any, optimizer: torch.optim.Optimizer) -> tuple[Optional[torch.Tensor], Optional[dict]]:
    """(scale, iteration) of ``optimizer``'s gradients under a GradScaler (None, None without one or when disabled).

    ``scale`` is the scaler's scale tensor while the gradients are still scaled (before ``unscale_``), else None (read
    without a host sync); ``iteration`` is the scaler's record for ``optimizer``, a new object after each ``update()``.
    """
    if scaler is None:
        return None, None
    if not hasattr(scaler, "_per_optimizer_states"):  # torch.amp.GradScaler, torch.cuda.amp.GradScaler (torch < 2.3)
        raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
    if not scaler.is_enabled():
        return None, None
    iteration = scaler._per_optimizer_states[id(optimizer)]
    stage = iteration["stage"].name  # OptState: READY (still scaled), UNSCALED or STEPPED
    if stage == "STEPPED":
        raise RuntimeError("add_prior_gradient() was called after scaler.step(optimizer) and before scaler.update(); "
                           "call it before the optimizer step (after the last backward, before clipping)")
    return (scaler._get_scale_async() if stage == "READY" else None), iteration


class SRFTEngine:
    """State and per-step work of SRFT for a fixed list of regularized parameters."""

    def __init__(self, config: SRFTConfig, targets: list[Target]) -> None:
        self.config = config
        self.targets = targets
        self.params = [t.param for t in targets]
        self.names = [t.name for t in targets]
        self.prior: Optional[PriorSignificance] = None
        self.prior_term: Optional[PriorTerm] = None
        self.layout = FlatLayout.build(self.params, [None] * len(self.params))
        self.transfer = TransferTerm(config, self.params)
        self.step = 0
        self.total_steps = config.total_steps
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.statistics: Optional[str] = None  # "own" | "optimizer", resolved by attach()
        self.v_flat: Optional[torch.Tensor] = None
        self._workspace: Optional[torch.Tensor] = None
        self._cast: Optional[torch.Tensor] = None  # float32 copy of non-float32 weights (and their step snapshot)
        self._handles: list[Any] = []
        self._pending: Optional[tuple[float, float]] = None
        self._skipped = False  # the current step is one a GradScaler skips (fused optimizers only)
        self._prior_added: dict[int, weakref.ref] = {}  # index -> gradient tensor given the prior by add_prior_gradient
        self._prior_iteration: Optional[dict] = None  # the GradScaler iteration of those additions (when passed)

    # --- set-up -----------------------------------------------------------------------------------------------------
    def set_prior(self, prior: PriorSignificance) -> None:
        """Use ``prior`` from now on, anchored at the current weights; re-lays the flat buffers if needed. A prior that
        is not normalized (``prior.normalized`` False) is refused, nothing changed."""
        prior.require_normalized()
        if self.step > 0:
            warnings.warn(f"SRFT: the prior is set after {self.step} optimizer steps; the anchor theta0 becomes the "
                          "current (already fine-tuned) weights", stacklevel=3)
        term = build_prior_term(self.targets, self.params, self.names, prior)
        old_layout, old_v = self.layout, self.v_flat
        self.prior, self.prior_term, self.layout = prior, term, term.layout
        self._workspace = self._cast = None
        if old_v is not None:
            self.v_flat = self.layout.new_buffer()
            torch._foreach_copy_(self.layout.views(self.v_flat), old_layout.views(old_v))

    def attach(self, optimizer: Any, total_steps: Optional[int] = None) -> None:
        """Hook ``optimizer`` (pre-step: prior gradient, statistics, snapshot; post-step: transfer damping).

        Everything is checked before an existing attachment is replaced, so a failed call leaves it working.
        """
        opt = unwrap_optimizer(optimizer)
        in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
        missing = [n for n, p in zip(self.names, self.params) if id(p) not in in_optimizer]
        if missing:
            raise ValueError(f"regularized parameter {missing[0]!r} (and {len(missing) - 1} more) is not in the "
                             "optimizer; build the optimizer from srft.parameters() or the same model")
        self._check_not_attached_elsewhere(opt)
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        new_total = self.total_steps if total_steps is None else total_steps
        kappa(self.config, 0, new_total)  # raises now if the schedule needs total_steps
        stats = self.config.transfer_statistics
        if stats == "auto":
            stats = "optimizer" if "betas" in opt.defaults and "Adam" in type(opt).__name__ else "own"
        if stats == "optimizer" and "betas" not in opt.defaults:
            raise ValueError(f"transfer_statistics='optimizer' needs an Adam-family optimizer with exp_avg_sq, got "
                             f"{type(opt).__name__}")
        self._warn_at_attach(opt)
        self.detach()
        self.total_steps, self.optimizer, self.statistics = new_total, opt, stats
        if stats == "own" and self.v_flat is None:
            self.v_flat = self.layout.new_buffer()
        self._handles = [opt.register_step_pre_hook(self._before_step),
                         opt.register_step_post_hook(self._after_step)]
        _ATTACHED.setdefault(opt, weakref.WeakSet()).add(self)

    def _check_not_attached_elsewhere(self, opt: torch.optim.Optimizer) -> None:
        """Refuse a second SRFT attachment on ``opt`` over the same parameters (e.g. a model wrapped twice by a
        re-run notebook cell): each would add the prior gradient, applying it twice."""
        mine = {id(p) for p in self.params}
        for other in list(_ATTACHED.get(opt, ())):
            if other is self or other.optimizer is not opt:
                continue
            shared = [n for n, p in zip(other.names, other.params) if id(p) in mine]
            if shared:
                raise ValueError(f"the optimizer {type(opt).__name__} already has an SRFT attachment for parameter "
                                 f"{shared[0]!r} (another SRFTModel over the same model, e.g. from re-running "
                                 "get_srft_model); call detach() on that one first or build a new optimizer")

    def _warn_at_attach(self, opt: torch.optim.Optimizer) -> None:
        """Warn about settings that silently weaken the regularization."""
        decayed = [n for group in opt.param_groups if group.get("weight_decay", 0.0) > 0
                   for n, p in zip(self.names, self.params) if any(p is q for q in group["params"])]
        if decayed:
            warnings.warn(f"SRFT: weight_decay > 0 on {len(decayed)} regularized parameters (e.g. {decayed[0]!r}) pulls "
                          "them toward 0, not toward the pretrained weights theta0; consider weight_decay=0 for them",
                          stacklevel=4)
        if self.prior_term is None and self.config.lambda_prior > 0:
            warnings.warn(f"SRFT: attached with lambda_prior={self.config.lambda_prior} but no prior significance, so "
                          "the prior term is off; call srft.estimate_prior(...) or srft.set_prior(...) (it applies from "
                          "the next step), or set lambda_prior=0 to train with the transfer term only", stacklevel=4)

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._prior_added, self._prior_iteration = {}, None
        if self.optimizer is not None:
            _ATTACHED.get(self.optimizer, weakref.WeakSet()).discard(self)
        self.optimizer = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # --- schedule ---------------------------------------------------------------------------------------------------
    def kappa(self) -> float:
        return kappa(self.config, self.step, self.total_steps)

    def coefficients(self) -> tuple[float, float]:
        """(lambda_p(t), gamma(t)) at the current step."""
        return coefficients(self.config, self.step, self.total_steps)

    # --- the penalty (loss mode and logging) ------------------------------------------------------------------------
    @_without_autocast
    def penalty(self) -> torch.Tensor:
        """R_prior at the current weights (autograd graph); 0 without a prior."""
        if self.prior_term is None:
            return self.params[0].new_zeros((), dtype=torch.float32)
        return self.prior_term.penalty(self.params)

    @torch.compiler.disable
    def loss_term(self) -> torch.Tensor:
        """lambda_p(t) R_prior, the term ``apply="loss"`` adds to the loss.

        Run eagerly under ``torch.compile`` (lambda_p(t) changes every step and would force a recompilation)."""
        lam = self.coefficients()[0] if self.prior_term is not None else 0.0
        if lam == 0.0:
            return self.params[0].new_zeros((), dtype=torch.float32)
        return lam * self.penalty()

    # --- per-step work ----------------------------------------------------------------------------------------------
    def workspace(self) -> torch.Tensor:
        if self._workspace is None:
            self._workspace = self.layout.new_buffer()
        return self._workspace

    def _float32_params(self) -> list[torch.Tensor]:
        """The regularized parameters in float32: themselves, or (other dtypes) their copy into a buffer allocated once,
        which then also serves as the step snapshot theta_{t-1}."""
        if self.params[0].dtype == STATE_DTYPE:
            return self.params
        if self._cast is None:
            self._cast = self.layout.new_buffer()
        views = self.layout.views(self._cast)
        torch._foreach_copy_(views, self.params)
        return views

    @torch.no_grad()
    def follow_parameters(self) -> None:
        """Move SRFT's state to the regularized parameters' device after the model moved (``.to``, ``.cuda``);
        its dtype stays float32 whatever theirs became (``.half()``, ``.double()``). Scratch buffers are re-allocated
        on first use."""
        device = self.params[0].device
        self.layout.device = device
        self._workspace = self._cast = None
        if self.prior_term is not None:
            self.prior_term.to_(device)
        if self.v_flat is not None:
            self.v_flat = self.v_flat.to(device)
        self.transfer.to_(device)

    def _live(self) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """Indices, parameters and gradients of the regularized parameters that have a gradient this step."""
        index = [i for i, p in enumerate(self.params) if p.grad is not None]
        return index, [self.params[i] for i in index], [self.params[i].grad for i in index]

    def _add_prior_gradient_(self, index: list[int], lam: float, scale: Optional[torch.Tensor],
                             added: dict[int, weakref.ref], views: list[torch.Tensor]) -> bool:
        """grad += lam grad R_prior (times ``scale`` for gradients still scaled) on the parameters ``index`` whose
        current gradient tensor is not in ``added`` (those that received it this step); ``views`` are the workspace's
        per-parameter views. Returns whether it ran (grad R_prior, scaled, is then in the workspace and, for non-float32
        weights, their float32 copy is current)."""
        if self.config.apply != "grad" or not lam > 0.0 or self.prior_term is None:
            return False
        if added:
            index = [i for i in index if (ref := added.get(i)) is None or ref() is not self.params[i].grad]
            if not index:
                return False
        ws = self.workspace()
        self.prior_term.gradient_into_(self._float32_params(), ws)
        if scale is not None:
            ws.mul_(scale.to(ws.dtype))
        torch._foreach_add_([self.params[i].grad for i in index], [views[i] for i in index], alpha=lam)
        return True

    @torch.no_grad()
    @_without_autocast
    def add_prior_gradient(self, scaler: Any = None) -> None:
        """Add lambda_p(t) grad R_prior to the gradients now (``apply="grad"``), so that clipping sees it; the next
        optimizer step then does not add it again. See :meth:`srft_peft.SRFTModel.add_prior_gradient`."""
        if not self.attached:
            raise RuntimeError("add_prior_gradient() needs an attached optimizer (call srft.attach(optimizer) first): "
                               "its pre-step hook must know not to add the prior gradient a second time")
        if self.config.apply != "grad":
            raise RuntimeError(f"add_prior_gradient() is for apply='grad'; with apply={self.config.apply!r} the prior "
                               "term is already in the loss, so its gradient is part of the clipped gradient")
        index = self._live()[0]
        if not index:
            raise RuntimeError("add_prior_gradient(): no regularized parameter has a gradient; call it after the last "
                               "backward() of the optimizer step, before clipping")
        scale, iteration = scaler_state(scaler, self.optimizer)
        if iteration is not None and iteration is not self._prior_iteration:  # a new scaler iteration: a new step
            self._prior_added, self._prior_iteration = {}, iteration
        views = self.layout.views(self.workspace())
        self._add_prior_gradient_(index, self.coefficients()[0], scale, self._prior_added, views)
        self._prior_added.update({i: weakref.ref(self.params[i].grad) for i in index})

    @torch.no_grad()
    @_without_autocast
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        added, self._prior_added, self._prior_iteration = self._prior_added, {}, None  # this step consumes them
        self._skipped, scale = amp_step_state(optimizer)
        if self._skipped:
            return
        lam, gamma = self.coefficients()
        self._pending = (lam, gamma)
        index, params, grads = self._live()
        if not index:
            return
        ws = self.workspace()
        views = self.layout.views(ws)
        live_views = [views[i] for i in index]
        cast = self.params[0].dtype != STATE_DTYPE
        prior_gradient = self._add_prior_gradient_(index, lam, scale, added, views)
        if self.statistics == "own":
            if len(index) < len(self.params):
                ws.zero_()  # a parameter without a gradient this step counts as a zero gradient
            torch._foreach_copy_(live_views, grads)
            if scale is not None:
                ws.div_(scale.to(ws.dtype))
            ema_update_(self.v_flat, ws, self.config.transfer_beta)
        if gamma > 0.0 and not cast:
            torch._foreach_copy_(live_views, params)  # the snapshot theta_{t-1}
        elif gamma > 0.0 and not prior_gradient:
            self._float32_params()  # the snapshot (the prior gradient made this copy already when it ran)

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._skipped:  # the optimizer's kernel skipped this step: nothing moved, nothing to count
            self._skipped = False
            return
        lam, gamma = self._pending if self._pending is not None else self.coefficients()
        self._pending = None
        if gamma > 0.0:
            index, params, grads = self._live()
            if index:
                v = self._statistics_for(index)
                views = self.layout.views(self.workspace())
                if self.params[0].dtype == STATE_DTYPE:  # snapshot in the workspace, gradients (dead after step): scratch
                    previous, weights = [views[i] for i in index], grads
                else:  # snapshot in the float32 copy, the workspace as float32 scratch
                    snapshot = self.layout.views(self._cast)
                    previous, weights = [snapshot[i] for i in index], [views[i] for i in index]
                self.transfer.damping_into_(index, v, weights, self.step, gamma)
                self.transfer.apply_(params, previous, weights)
        self.step += 1

    def _statistics_for(self, index: Sequence[int]) -> list[torch.Tensor]:
        if self.statistics == "own":
            views = self.layout.views(self.v_flat)
            return [views[i] for i in index]
        state = self.optimizer.state
        out = []
        for i in index:
            v = state.get(self.params[i], {}).get("exp_avg_sq")
            out.append(v if v is not None else torch.zeros_like(self.params[i]))
        return out

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of every persistent tensor SRFT holds, by role, plus the regularized parameters' own bytes."""
        def size(tensors: Any) -> int:
            return sum(t.numel() * t.element_size() for t in tensors)

        prior = self.prior_term.nbytes() if self.prior_term is not None else 0
        return {
            "parameters": size(self.params),
            "workspace": size([t for t in (self._workspace, self._cast) if t is not None]),
            "statistics": size([self.v_flat]) if self.v_flat is not None else 0,
            "rank_damping": size(self.transfer.rank_codes.values()),
            "prior": prior,
        }

    # --- state ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: step, T, own statistics, rank-mode damping, anchors."""
        tensors: dict[str, torch.Tensor] = {}
        if self.v_flat is not None:
            tensors["transfer.v"] = self.v_flat
        for i, codes in self.transfer.rank_codes.items():
            tensors[f"transfer.rank_codes.{self.names[i]}"] = codes
        if self.prior_term is not None:
            tensors.update({f"anchor.{k}": v for k, v in self.prior_term.state_tensors().items()})
        return {"step": self.step, "total_steps": self.total_steps, "statistics": self.statistics,
                "tensors": {k: v.detach().clone() for k, v in tensors.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        from ..checkpoint import check_training_state

        check_training_state(self, state)  # a state of another model raises here, before anything is assigned
        tensors = state.get("tensors", {})
        if "transfer.v" in tensors:
            v = tensors["transfer.v"]
            if self.v_flat is None:
                self.v_flat = self.layout.new_buffer()
            self.v_flat.copy_(v)
        self.transfer.rank_codes = {}
        for i, (n, p) in enumerate(zip(self.names, self.params)):
            codes = tensors.get(f"transfer.rank_codes.{n}")
            if codes is None and f"transfer.rank_m.{n}" in tensors:  # states written before the int16 cache
                cfg = self.config
                m = tensors[f"transfer.rank_m.{n}"].double()
                codes = ((m - cfg.damping_min) * (RANK_LEVELS / (cfg.damping_max - cfg.damping_min))).round_()
                codes = codes.clamp_(0, RANK_LEVELS).to(torch.int16)
            if codes is None:
                continue
            self.transfer.rank_codes[i] = codes.to(p.device).clone()
        if self.prior_term is not None:
            anchors = {k[len("anchor."):]: v for k, v in tensors.items() if k.startswith("anchor.")}
            if anchors:
                self.prior_term.load_state_tensors(anchors)
        self.step = int(state["step"])
        self.total_steps = state.get("total_steps", self.total_steps)
