"""`SRFTEngine`: runs the regularizer around each optimizer step.

Before ``optimizer.step()`` (after unscaling, clipping and gradient synchronization):
    1. grad += lambda_p(t) grad R_prior            (``prior_application="gradient"``, ``apply="grad"``; fused, no
                                                    autograd; skipped for the gradients that
                                                    `SRFTEngine.add_prior_gradient` already received)
    2. v <- beta v + (1 - beta) g^2                 (own statistics; skipped on non-finite gradients, no host sync)
    3. theta_prev <- theta                          (while gamma(t) > 0, under "decoupled", or while monitoring)
After it (theta' = the optimizer's result, eta = each parameter's param-group lr read before the step, c = eta lambda_p):
    4. theta <- theta - gamma(t) m (theta - theta_prev)                 (the transfer damping of the optimizer's step)
    5. theta <- theta - c F (theta_prev - theta0)                       ("decoupled")
       theta <- theta0 + (I + c F)^-1 (theta - theta0)                  ("proximal", at the damped weights)
    6. t <- t + 1

Order: the damping (4) acts on the optimizer's step only, then the prior (5) acts on the result; both at once give
theta_{t+1} = theta' - gamma m (theta' - theta_t) - c F (theta_t - theta0) (decoupled) and
theta_{t+1} = theta0 + (I + c F)^-1 (theta' - gamma m (theta' - theta_t) - theta0) (proximal), so the proximal result
is always the prior's shrink of what the optimizer and the damping left. Under "gradient" the damping acts on the
optimizer's step, which already holds the prior.

An optimizer step that a GradScaler skips calls neither hook, so it changes no statistic and no counter. Fused or
capturable optimizers (``_step_supports_amp_scaling``, e.g. ``AdamW(fused=True)``) are the exception: GradScaler calls
their ``step()`` on every step, with the gradients still scaled and an inf flag; the hooks read ``grad_scale`` and
``found_inf`` from the optimizer, work on unscaled values and treat a flagged step as skipped.
State and arithmetic are float32 whatever the parameters' dtype, with autocast disabled: bf16/fp16 weights are cast
once per step into a float32 buffer (allocated once) for U^T W V - P0, that buffer also holds the snapshot
theta_{t-1} (exact: every bf16/fp16 value is a float32), and the parameters only receive the results (the prior
gradient added to ``.grad``, the damping, the decoupled or proximal pull). SRFT's tensors follow the parameters' device
(see `follow_parameters`). All per-element state lives in flat buffers (see `layout`); the hot path is a fixed number
of ``_foreach`` ops and one batched matmul per group of same-shaped matrices, with no ``.item()`` (except reading a
fused optimizer's inf flag). The balance monitor (`SRFTEngine.monitor`) is off by default and then costs nothing.
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
from ..targeting import LORA_KINDS, Target
from . import state as state_keys
from .layout import STATE_DTYPE, FlatLayout
from .lora_term import build_prior_term
from .prior_term import PriorTerm, Scale
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


def norm_of(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all elements of ``tensors`` together, as a 0-dim float32 tensor (no host sync)."""
    return torch.stack(torch._foreach_norm(list(tensors))).float().norm()


def scaled_norm(tensors: Sequence[torch.Tensor], scales: Sequence[Any]) -> torch.Tensor:
    """The L2 norm of (scales[i] * tensors[i]) over all i, without materializing the products (no host sync)."""
    return torch.stack(torch._foreach_mul(list(torch._foreach_norm(list(tensors))), list(scales))).norm()


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
        lora = [t.name for t in targets if t.kind in LORA_KINDS]
        if lora and config.prior_application != "gradient":
            raise ValueError(f"prior_application={config.prior_application!r} is not supported on LoRA adapters (e.g. "
                             f"{lora[0]!r}): SRFT on LoRA supports prior_application='gradient' only")
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
        self._group_of: Optional[list[int]] = None  # param-group index of each regularized parameter (see _step_sizes)
        self._group_count = 0
        self._monitor_buffer: Optional[torch.Tensor] = None  # scratch of the balance monitor (allocated when enabled)
        self._balance: dict[str, torch.Tensor] = {}  # the monitor's norms of the last optimizer step (0-dim tensors)
        self._record: dict[str, torch.Tensor] = {}  # ... of the step under way (moved to _balance when it completes)
        if config.monitor_balance:
            self.monitor(True)

    # --- set-up -----------------------------------------------------------------------------------------------------
    def set_prior(self, prior: PriorSignificance) -> None:
        """Use ``prior`` from now on, anchored at the current weights, its curvatures clipped at ``omega_max`` in the
        term (``self.prior`` keeps them as given); re-lays the flat buffers if needed. A prior that is not normalized
        (``prior.normalized`` False) is refused, nothing changed."""
        prior.require_normalized()
        if self.step > 0:
            warnings.warn(f"SRFT: the prior is set after {self.step} optimizer steps; the anchor theta0 becomes the "
                          "current (already fine-tuned) weights", stacklevel=3)
        term = build_prior_term(self.targets, self.params, self.names, prior.clipped(self.config.omega_max))
        old_layout, old_v = self.layout, self.v_flat
        self.prior, self.prior_term, self.layout = prior, term, term.layout
        self._workspace = self._cast = None
        if self._monitor_buffer is not None:  # scratch: re-laid out / re-allocated on the parameters' device
            self._monitor_buffer = self.layout.new_buffer()
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
        self._group_of = None
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
        if self._monitor_buffer is not None:  # scratch: re-laid out / re-allocated on the parameters' device
            self._monitor_buffer = self.layout.new_buffer()
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
                             added: dict[int, weakref.ref], views: list[torch.Tensor],
                             sizes: Optional[list[Scale]] = None) -> bool:
        """grad += lam grad R_prior (times ``scale`` for gradients still scaled) on the parameters ``index`` whose
        current gradient tensor is not in ``added`` (those that received it this step); ``views`` are the workspace's
        per-parameter views. Returns whether it ran (grad R_prior, scaled, is then in the workspace and, for non-float32
        weights, their float32 copy is current). With ``sizes`` (eta lambda_p per parameter; the monitor is on) it
        records ||eta lambda_p grad R_prior|| as the prior's share of the balance."""
        if (self.config.apply != "grad" or self.config.prior_application != "gradient" or not lam > 0.0
                or self.prior_term is None):
            return False
        if added:
            index = [i for i in index if (ref := added.get(i)) is None or ref() is not self.params[i].grad]
            if not index:
                return False
        ws = self.workspace()
        self.prior_term.gradient_into_(self._float32_params(), ws)
        if sizes is not None:
            self._record["prior"] = scaled_norm([views[i] for i in index], [sizes[i] for i in index])
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
        if self.config.prior_application != "gradient":  # no prior gradient exists: the total gradient is the task's
            return
        index = self._live()[0]
        if not index:
            raise RuntimeError("add_prior_gradient(): no regularized parameter has a gradient; call it after the last "
                               "backward() of the optimizer step, before clipping")
        scale, iteration = scaler_state(scaler, self.optimizer)
        if iteration is not None and iteration is not self._prior_iteration:  # a new scaler iteration: a new step
            self._prior_added, self._prior_iteration = {}, iteration
        views = self.layout.views(self.workspace())
        lam = self.coefficients()[0]
        sizes = self._step_sizes(self.optimizer, lam) if self.monitoring else None
        self._add_prior_gradient_(index, lam, scale, self._prior_added, views, sizes)
        self._prior_added.update({i: weakref.ref(self.params[i].grad) for i in index})

    def _step_sizes(self, optimizer: torch.optim.Optimizer, lam: float) -> list[Scale]:
        """eta lambda_p per regularized parameter, eta its param group's lr now (a number, or a 0-dim tensor when the lr
        is a tensor on the parameters' device; no host sync). The parameter -> group map is built once and again when
        the number of param groups changes."""
        groups = optimizer.param_groups
        if self._group_of is None or self._group_count != len(groups):
            where = {id(p): j for j, g in enumerate(groups) for p in g["params"]}
            self._group_of, self._group_count = [where[id(p)] for p in self.params], len(groups)
        lrs = [g["lr"].item() if isinstance(g["lr"], torch.Tensor) and g["lr"].device.type == "cpu" else g["lr"]
               for g in groups]  # a CPU tensor is read without a device sync
        if any(isinstance(lr, torch.Tensor) for lr in lrs):
            device = self.layout.device
            lrs = [lr.to(device, STATE_DTYPE) if isinstance(lr, torch.Tensor)
                   else torch.full((), lr, device=device, dtype=STATE_DTYPE) for lr in lrs]
        sizes = [lam * lr for lr in lrs]
        return [sizes[j] for j in self._group_of]

    def _prior_acts_after_step(self, lam: float) -> bool:
        return self.config.prior_application != "gradient" and lam > 0.0 and self.prior_term is not None

    @torch.no_grad()
    @_without_autocast
    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        added, self._prior_added, self._prior_iteration = self._prior_added, {}, None  # this step consumes them
        self._skipped, scale = amp_step_state(optimizer)
        if self._skipped:
            return
        lam, gamma = self.coefficients()
        monitoring = self.monitoring
        sizes = self._step_sizes(optimizer, lam) if self._prior_acts_after_step(lam) or monitoring else None
        self._pending = (lam, gamma, sizes)
        index, params, grads = self._live()
        if not index:
            return
        ws = self.workspace()
        views = self.layout.views(ws)
        live_views = [views[i] for i in index]
        cast = self.params[0].dtype != STATE_DTYPE
        prior_gradient = self._add_prior_gradient_(index, lam, scale, added, views, sizes if monitoring else None)
        if self.statistics == "own":
            if len(index) < len(self.params):
                ws.zero_()  # a parameter without a gradient this step counts as a zero gradient
            torch._foreach_copy_(live_views, grads)
            if scale is not None:
                ws.div_(scale.to(ws.dtype))
            ema_update_(self.v_flat, ws, self.config.transfer_beta)
        snapshot = gamma > 0.0 or monitoring or (self.config.prior_application == "decoupled"
                                                 and self._prior_acts_after_step(lam))
        if snapshot and not cast:
            torch._foreach_copy_(live_views, params)  # the snapshot theta_{t-1}
        elif snapshot and not prior_gradient:
            self._float32_params()  # the snapshot (the prior gradient made this copy already when it ran)

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self._skipped:  # the optimizer's kernel skipped this step: nothing moved, nothing to count
            self._skipped, self._record = False, {}
            return
        lam, gamma, sizes = self._pending if self._pending is not None else (*self.coefficients(), None)
        self._pending = None
        index, params, grads = self._live()
        if index and (gamma > 0.0 or sizes is not None):
            self._update_after_step(index, params, grads, lam, gamma, sizes)
        if self.monitoring:
            self._balance, self._record = self._record, {}
        self.step += 1

    def _update_after_step(self, index: list[int], params: list[torch.Tensor], grads: list[torch.Tensor], lam: float,
                           gamma: float, sizes: Optional[list[Scale]]) -> None:
        """Steps 4 and 5 of the module docstring on the parameters ``index`` (those the optimizer stepped), in float32
        buffers: for float32 weights the snapshot is in the workspace and the (dead) gradients are the damping's
        scratch; for other dtypes the snapshot is in the float32 copy and the workspace is the scratch."""
        cast = self.params[0].dtype != STATE_DTYPE
        ws = self.workspace()
        views = self.layout.views(ws)
        live = [views[i] for i in index]
        mode = self.config.prior_application if self._prior_acts_after_step(lam) else None
        monitor = self.monitoring
        snapshot = live  # theta_t: in the workspace, or for other dtypes in the float32 copy (when it was taken)
        if cast and (gamma > 0.0 or monitor or mode == "decoupled"):
            snapshot = [self.layout.views(self._cast)[i] for i in index]
        if monitor:
            step = [self.layout.views(self._monitor_buffer)[i] for i in index]
            torch._foreach_copy_(step, params)
            torch._foreach_sub_(step, snapshot)  # theta' - theta_t
            self._record["task_update"] = norm_of(step)
        if mode == "decoupled" and cast:
            # the pull c F (theta_t - theta0) goes into the workspace, then out of the weights and of the snapshot, so
            # that the damping's lerp toward the snapshot leaves it whole: theta' - c G + gamma m (theta_t - theta')
            self.prior_term.pull_into_(self.layout.views(self._cast), ws, sizes)
            self._subtract_pull(params, live)
            torch._foreach_sub_(snapshot, live)
        if gamma > 0.0:
            weights = live if cast else grads
            self.transfer.damping_into_(index, self._statistics_for(index), weights, self.step, gamma)
            if monitor:
                torch._foreach_mul_(step, weights)
                self._record["damping"] = norm_of(step)
            self.transfer.apply_(params, snapshot, weights)
        if mode == "decoupled" and not cast:
            self.prior_term.pull_into_(views, ws, sizes)  # from the snapshot theta_t, in place
            self._subtract_pull(params, live)
        elif mode == "proximal":
            self.prior_term.pull_into_(self._float32_params(), ws, sizes, proximal=True)
            self._subtract_pull(params, live)
        if monitor and self.prior_term is not None:
            self._record["drift"] = self.prior_term.drift_sq(self._float32_params(), self._monitor_buffer).sqrt()

    def _subtract_pull(self, params: list[torch.Tensor], pull: list[torch.Tensor]) -> None:
        """theta <- theta - pull (the workspace's views of the live parameters); recorded by the monitor."""
        if self.monitoring:
            self._record["prior"] = norm_of(pull)
        torch._foreach_sub_(params, pull)

    # --- balance monitor --------------------------------------------------------------------------------------------
    def monitor(self, enabled: bool = True) -> None:
        """Record, at every optimizer step from now on, the norms that `balance` returns (off: no work, no buffer).

        Costs one float32 buffer of the regularized parameters' size and a few fused passes per step while on."""
        if not isinstance(enabled, bool):
            raise TypeError(f"monitor(enabled) needs a bool, got {enabled!r}")
        self._monitor_buffer = self.layout.new_buffer() if enabled else None
        self._balance, self._record = {}, {}

    @property
    def monitoring(self) -> bool:
        return self._monitor_buffer is not None

    def balance(self) -> dict[str, float]:
        """The norms of the last optimizer step's parts (read here, one host sync; see :meth:`monitor`):

        ``task_update`` ||theta' - theta_t|| (the optimizer's step; under "gradient" it holds the prior's effect),
        ``prior`` ||the prior's pull|| (the decoupled pull or the proximal shrink applied after the step; under
        "gradient" eta lambda_p ||grad R_prior||, what the pull would be without the optimizer's rescaling),
        ``damping`` ||gamma m (theta' - theta_t)|| (what the transfer damping removed), ``drift`` the drift along the
        kept directions after the step, sqrt(sum ||U^T (W - W0) V||^2 + ||theta - theta0||^2 (diagonal entries)).
        Parts that did not act are 0; empty before the first monitored step.
        """
        if not self._balance:
            return {}
        zero = torch.zeros(())
        keys = ("task_update", "prior", "damping", "drift")
        values = torch.stack([self._balance.get(k, zero).to(zero.device, zero.dtype) for k in keys]).tolist()
        return dict(zip(keys, values))

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
            "workspace": size([t for t in (self._workspace, self._cast, self._monitor_buffer) if t is not None]),
            "statistics": size([self.v_flat]) if self.v_flat is not None else 0,
            "rank_damping": size(self.transfer.rank_codes.values()),
            "prior": prior,
        }

    # --- state (key names and validation: regularizer/state.py) ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: step, T, own statistics, rank-mode damping, anchors."""
        tensors: dict[str, torch.Tensor] = {}
        if self.v_flat is not None:
            tensors[state_keys.V] = self.v_flat
        for i, codes in self.transfer.rank_codes.items():
            tensors[state_keys.RANK_CODES + self.names[i]] = codes
        if self.prior_term is not None:
            tensors.update({state_keys.ANCHOR + k: v for k, v in self.prior_term.state_tensors().items()})
        return {"step": self.step, "total_steps": self.total_steps, "statistics": self.statistics,
                "tensors": {k: v.detach().clone() for k, v in tensors.items()}}

    def check_state(self, state: Any, prior: Optional[PriorSignificance] = None) -> None:
        """Raise ``ValueError`` naming the key and value unless ``state`` (a :meth:`state_dict`) was written for these
        parameters; ``prior`` is the significance that will be installed first (default: the current one)."""
        state_keys.check_state(state, self.targets, self.prior_term, prior)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)  # a state of another model raises here, before anything is assigned
        tensors = state.get("tensors", {})
        if state_keys.V in tensors:
            v = tensors[state_keys.V]
            if self.v_flat is None:
                self.v_flat = self.layout.new_buffer()
            self.v_flat.copy_(v)
        self.transfer.rank_codes = {}
        for i, (n, p) in enumerate(zip(self.names, self.params)):
            codes = tensors.get(state_keys.RANK_CODES + n)
            if codes is None and state_keys.RANK_M + n in tensors:  # states written before the int16 cache
                cfg = self.config
                m = tensors[state_keys.RANK_M + n].double()
                codes = ((m - cfg.damping_min) * (RANK_LEVELS / (cfg.damping_max - cfg.damping_min))).round_()
                codes = codes.clamp_(0, RANK_LEVELS).to(torch.int16)
            if codes is None:
                continue
            self.transfer.rank_codes[i] = codes.to(p.device).clone()
        if self.prior_term is not None:
            anchors = {k[len(state_keys.ANCHOR):]: v for k, v in tensors.items() if k.startswith(state_keys.ANCHOR)}
            if anchors:
                self.prior_term.load_state_tensors(anchors)
        self.step = int(state["step"])
        self.total_steps = state.get("total_steps", self.total_steps)

    def training_state(self) -> dict[str, Any]:
        """``{"engine": state_dict(), "prior": prior.to_state()}`` (no ``"prior"`` without one): all that resuming
        needs. Tensors, numbers, strings and dicts only, so ``torch.load(..., weights_only=True)`` reads it."""
        state: dict[str, Any] = {"engine": self.state_dict()}
        if self.prior is not None:
            state["prior"] = self.prior.to_state()
        return state

    @torch.no_grad()
    def load_training_state(self, state: Any) -> None:
        """Install a :meth:`training_state`: first the saved prior (no re-estimation needed), then the anchors,
        statistics and step, so the run continues exactly. All of it is validated before anything is set."""
        prior = state_keys.training_state_prior(state)
        self.check_state(state["engine"], prior)
        if prior is not None:
            with warnings.catch_warnings():  # the anchors are restored right below, not taken from the weights
                warnings.filterwarnings("ignore", message="SRFT: the prior is set after")
                self.set_prior(prior)
        self.load_state_dict(state["engine"])

    def transfer_snapshot(self) -> state_keys.TransferSnapshot:
        """The step, the statistics source and v per regularized parameter (``None`` without own statistics)."""
        v = None
        if self.v_flat is not None:
            v = {name: view.clone() for name, view in zip(self.names, self.layout.views(self.v_flat))}
        return state_keys.TransferSnapshot(self.step, self.statistics, v)

    @torch.no_grad()
    def load_transfer_snapshot(self, snapshot: state_keys.TransferSnapshot) -> None:
        """Set the step and (when ``snapshot.v`` holds it) v, validated first like :meth:`load_state_dict`."""
        tensors = {}
        if snapshot.v:
            flat = self.layout.new_buffer()
            torch._foreach_copy_(self.layout.views(flat), [snapshot.v[n] for n in self.names])
            tensors[state_keys.V] = flat
        self.load_state_dict({"step": snapshot.step, "tensors": tensors})
