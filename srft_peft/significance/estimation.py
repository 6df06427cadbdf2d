"""Measuring prior significance at the pretrained weights on calibration (pretraining-domain) batches.

One forward pass per batch records the inputs ``a`` and outputs ``y`` of every call of the hooked layers; one
``torch.autograd.grad`` call returns dObjective/dy for all of them (model ``.grad`` fields are never touched). The
objective is a batch mean over the B examples of the model's input batch, so ``g = B * dObjective/dy`` is the
per-example output gradient. Conventions (docs/concepts.md):

* Examples are counted from the model's input batch, never from a module's (possibly folded) leading dimension.
* A parameter used several times in one forward (a shared patch embedding, tied weights) has one per-example
  gradient: the sum over its uses.
* K-FAC factors per Linear/Conv2d weight, token-level ("expand", every token row of every call a sample):
  ``A = sum a a^T / rows`` and ``S = sum g g^T / examples``.
* The diagonal empirical Fisher ``E_n[(dl_n/dtheta)^2]`` from exact per-example gradients for Linear/Conv2d (grouped
  too) weights and biases and LayerNorm weights/biases, and for parameters broadcast over the batch by an addition or
  an ``expand`` (positional embeddings, class tokens); for every other parameter from the batch gradient,
  ``B * (dL/dtheta)^2`` per batch, averaged over batches weighted by their size ("per_batch").
* Statistics are accumulated in float64, the K-FAC factors (products and sums) in ``factor_dtype`` (float32 by
  default: the tolerance against float64 is in docs/concepts.md); a non-finite objective, activation,
  gradient or statistic raises ``ValueError`` naming the batch or the parameter.

Under ``torch.distributed`` the sums are all-reduced once at the end, so several processes over disjoint shards give
the same result as one process over their union.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..config import SRFTConfig
from ..targeting import Target
from .prior import DiagonalSignificance, KFACSignificance, PriorSignificance

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def call_model(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a calibration batch: a mapping as keyword arguments, a tensor as is, a tuple/list by its first
    element (the inputs; labels are not passed)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def main_output(out: Any) -> torch.Tensor:
    """The tensor the label-free objective uses: the output itself, else ``logits``, ``last_hidden_state``, ``pred_boxes``
    or the first tensor found."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "keys"):
        for key in ("logits", "last_hidden_state", "pred_boxes"):
            value = out.get(key) if hasattr(out, "get") else None
            if isinstance(value, torch.Tensor):
                return value
        values = list(out.values())
    elif isinstance(out, (tuple, list)):
        values = list(out)
    else:
        raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    raise TypeError(f"the model output of type {type(out).__name__} holds no floating-point tensor")


def model_loss(out: Any) -> Optional[torch.Tensor]:
    loss = out.get("loss") if hasattr(out, "get") else getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


def calibration_objective(model: nn.Module, batch: Any, config: SRFTConfig,
                          loss_fn: Optional[LossFn]) -> tuple[torch.Tensor, str]:
    """(objective, its name): the user's ``loss_fn``, the model's ``.loss`` or 1/2 ||f(x)||^2 averaged over the batch."""
    if loss_fn is not None:
        return loss_fn(model, batch), "loss_fn"
    out = call_model(model, batch)
    if config.calibration_objective in ("auto", "model_loss"):
        loss = model_loss(out)
        if loss is not None:
            return loss, "model_loss"
        if config.calibration_objective == "model_loss":
            raise ValueError("calibration_objective='model_loss' but the model output has no .loss; pass labels in the "
                             "batch, a loss_fn, or use calibration_objective='output_norm'")
    f = main_output(out)
    return 0.5 * f.float().pow(2).flatten(1).sum(1).mean(), "output_norm"


#: Columns of one row panel of a factor product. Only the panels on and above the diagonal are multiplied, about half
#: the floating-point work of a full x^T x (0.54 of it at n = 3072, 0.67 at n = 768); narrower factors take one product.
GRAM_PANEL = 256


def add_gram_(out: torch.Tensor, x: torch.Tensor, alpha: float = 1.0, panel: int = GRAM_PANEL) -> torch.Tensor:
    """``out += alpha * x^T x`` on the row panels of ``out`` (n x n) from the diagonal rightwards, for ``x`` (rows, n) of
    ``out``'s dtype: the upper triangle and the diagonal blocks are exact, the rest below the diagonal blocks is left
    as it was (:func:`symmetrize_` fills it once at the end).

    Example:
        >>> x = torch.randn(10, 600)
        >>> M = symmetrize_(add_gram_(torch.zeros(600, 600), x))
        >>> torch.allclose(M, x.T @ x, atol=1e-4)
        True
    """
    n = x.shape[1]
    step = n if n < 2 * panel else panel
    for i in range(0, n, step):
        out[i:i + step, i:].addmm_(x[:, i:i + step].T, x[:, i:], alpha=alpha)
    return out


def symmetrize_(M: torch.Tensor) -> torch.Tensor:
    """Mirror the upper triangle of ``M`` onto the lower one, in place (one temporary of M's size)."""
    M.triu_()
    return M.add_(M.triu(1).T)


class _Accumulator:
    """Running K-FAC sums of one hooked module over every token row of every call: sum a a^T, sum g g^T (upper
    triangles, :func:`add_gram_`; products and sums in ``dtype``, the config's ``factor_dtype``), and the number of
    rows."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.A: Optional[torch.Tensor] = None
        self.S: Optional[torch.Tensor] = None
        self.rows = torch.zeros(1, dtype=torch.float64)

    def add(self, a_tok: torch.Tensor, g_tok: torch.Tensor, g_scale: float = 1.0, stride: int = 1,
            offset: int = 0) -> None:
        """Add one call's rows, ``g`` multiplied by ``g_scale`` (S by its square); with ``stride`` k > 1 only token rows
        offset, offset + k, ... enter the products, which are scaled by (all rows / kept rows) so that the sums stay
        unbiased."""
        a2, g2 = a_tok.reshape(-1, a_tok.shape[-1]), g_tok.reshape(-1, g_tok.shape[-1])
        rows = a2.shape[0]
        if stride > 1 and rows > 1:
            start = offset % min(stride, rows)
            a2, g2 = a2[start::stride], g2[start::stride]
        scale = rows / a2.shape[0]
        a2, g2 = a2.to(self.dtype), g2.to(self.dtype)
        if self.A is None:
            self.A = torch.zeros(a2.shape[1], a2.shape[1], dtype=self.dtype, device=a2.device)
            self.S = torch.zeros(g2.shape[1], g2.shape[1], dtype=self.dtype, device=g2.device)
        add_gram_(self.A, a2, scale)
        add_gram_(self.S, g2, scale * g_scale * g_scale)
        self.rows = self.rows.to(a2.device) + rows


def _as_tokens(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token matrices of one call: a (L, T, n_in), g (L, T, n_out) with L the call's leading dimension (the batch, or a
    folded batch); a Conv2d is a Linear over unfolded patches, a LayerNorm's input is normalized."""
    L = a.shape[0]
    if isinstance(module, nn.Conv2d):
        a = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
        g = g.flatten(2).transpose(1, 2)
    elif isinstance(module, nn.LayerNorm):
        a = F.layer_norm(a, module.normalized_shape, None, None, module.eps)
    return a.reshape(L, -1, a.shape[-1]), g.reshape(L, -1, g.shape[-1])


def _per_example(calls: list[tuple[torch.Tensor, torch.Tensor]], batch_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """All calls' token rows grouped by example, (E, T_total, .) each for a and g, and whether E is the batch size.

    A call whose leading dimension is a multiple k of the batch size is taken as k contiguous rows per example (a
    batch-first layout, or a batch folded example-major such as windowed attention); the calls of one example are
    concatenated, so an example's gradient is the sum over its uses. When some call's leading dimension is not a
    multiple of the batch size the rows cannot be attributed: everything is one group (E = 1), the batch gradient.
    """
    grouped = all(a.shape[0] % batch_size == 0 for a, _ in calls)
    E = batch_size if grouped else 1
    a = [x.reshape(E, -1, x.shape[-1]) for x, _ in calls]
    g = [x.reshape(E, -1, x.shape[-1]) for _, x in calls]
    if len(calls) == 1:
        return a[0], g[0], grouped
    return torch.cat(a, 1), torch.cat(g, 1), grouped


def _sum_sq_per_example_outer(g: torch.Tensor, a: torch.Tensor, groups: int = 1,
                              chunk_elements: int = 1 << 25) -> torch.Tensor:
    """sum_e (g_e^T a_e)^2 in float64 for g (E, T, m), a (E, T, n), block-diagonal over ``groups`` (a grouped Conv2d:
    output block i sees input block i only), as (m, n / groups); chunked over examples to bound memory."""
    E, T, m = g.shape
    n = a.shape[-1]
    gg, aa = g.reshape(E, T, groups, m // groups), a.reshape(E, T, groups, n // groups)
    step = max(1, chunk_elements // max(m * n // groups, 1))
    total = torch.zeros(groups, m // groups, n // groups, dtype=torch.float64, device=g.device)
    for start in range(0, E, step):
        per_example = torch.einsum("etgm,etgn->egmn", gg[start:start + step], aa[start:start + step])
        total += per_example.pow_(2).sum(0)  # the sum over a chunk in float32, the running total in float64
    return total.reshape(m, n // groups)


def _sum_sq_of_layer_param(t: Target, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """sum_e (d l_e / d theta)^2 in float64 for a Linear/Conv2d/LayerNorm weight or bias, from its grouped token rows."""
    local = t.name[len(t.module_name) + 1:] if t.module_name else t.name
    if local == "bias":
        return g.sum(1).double().pow(2).sum(0)
    if isinstance(t.module, nn.LayerNorm):
        return (g * a).sum(1).double().pow(2).sum(0).view_as(t.param)
    return _sum_sq_per_example_outer(g, a, getattr(t.module, "groups", 1)).view_as(t.param)


#: autograd nodes that only broadcast a parameter over the batch (``x + pos_embed``, ``cls_token.expand(B, ...)``):
#: the per-example gradient of the parameter is the node's output gradient, summed over the broadcast dimensions.
_BROADCAST_NODES = ("AddBackward0", "ExpandBackward0")


def _broadcast_uses(root: Any, wanted: dict[int, Target]) -> dict[str, list[Any]]:
    """For each parameter in ``wanted`` (by id), the autograd nodes of the graph under ``root`` that consume it."""
    uses: dict[str, list[Any]] = {t.name: [] for t in wanted.values()}
    seen, stack = set(), [root] if root is not None else []
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            variable = getattr(nxt, "variable", None)  # an AccumulateGrad node: a leaf
            if variable is not None:
                if id(variable) in wanted:
                    uses[wanted[id(variable)].name].append(node)
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return uses


def _is_batch_broadcast(node: Any) -> bool:
    return type(node).__name__ in _BROADCAST_NODES and getattr(node, "_saved_alpha", 1) == 1


def _per_example_broadcast_grad(grad_out: torch.Tensor, shape: torch.Size, batch_size: int) -> Optional[torch.Tensor]:
    """(B, *shape): the per-example gradient of a parameter of ``shape`` broadcast over a batch-first output whose
    gradient is ``grad_out``; None when that output's leading dimension is not the batch or the shapes do not fit."""
    if grad_out.dim() == 0 or grad_out.dim() < len(shape) or grad_out.shape[0] != batch_size:
        return None
    full = (1,) * (grad_out.dim() - len(shape)) + tuple(shape)
    if full[0] != 1 or any(f not in (1, o) for f, o in zip(full[1:], grad_out.shape[1:])):
        return None
    dims = [i for i in range(1, grad_out.dim()) if full[i] == 1 and grad_out.shape[i] != 1]
    summed = grad_out.sum(dims, keepdim=True) if dims else grad_out
    return summed.reshape(batch_size, *shape)


def _gradients(objective: torch.Tensor, outputs: list[torch.Tensor], others: list[Target],
               others_by_id: dict[int, Target]) -> tuple[tuple, dict[str, list[torch.Tensor]]]:
    """dObjective/d(outputs) and dObjective/d(others), and for each of ``others`` that only batch broadcasts consume,
    the output gradients of those nodes (read by node pre-hooks during the same backward)."""
    captured: dict[str, list[torch.Tensor]] = {}
    handles = []
    try:
        for name, nodes in (_broadcast_uses(objective.grad_fn, others_by_id) if others else {}).items():
            if nodes and all(_is_batch_broadcast(n) for n in nodes):
                captured[name] = []
                handles += [n.register_prehook(lambda go, out=captured[name]: out.append(go[0])) for n in nodes]
        inputs = outputs + [t.param for t in others]
        grads = torch.autograd.grad(objective, inputs, allow_unused=True) if inputs else ()
    finally:
        for h in handles:
            h.remove()
    return grads, captured


def _sum_sq_of_broadcast_param(t: Target, batch_grad: torch.Tensor, grad_outs: list[torch.Tensor],
                               batch_size: int) -> tuple[torch.Tensor, bool]:
    """(sum over the batch's examples of (d l_n / d theta)^2 in float64, whether it is exact): exact from the output
    gradients of the broadcast nodes, summed over uses; else B^2 (dL/dtheta)^2, i.e. the per-batch estimate
    B (dL/dtheta)^2 weighted by the B examples it stands for."""
    per_use = [_per_example_broadcast_grad(go.float(), t.param.shape, batch_size) for go in grad_outs]
    if per_use and all(p is not None for p in per_use):
        return (torch.stack(per_use).sum(0) * batch_size).double().pow(2).sum(0), True
    return (batch_grad.double() * batch_size).pow(2), False


def _check_objective(objective: Any, index: int) -> None:
    """A finite scalar tensor that depends on the model, or an error naming batch ``index``."""
    if not isinstance(objective, torch.Tensor) or not objective.is_floating_point():
        kind = type(objective).__name__ if not isinstance(objective, torch.Tensor) else f"tensor of {objective.dtype}"
        raise TypeError(f"the calibration objective of batch {index} must be a floating-point scalar tensor, got "
                        f"{kind} {objective!r:.60}")
    if objective.dim() != 0:
        raise ValueError(f"the calibration objective must be a scalar, got shape {tuple(objective.shape)} "
                         f"(batch {index})")
    if not torch.isfinite(objective):
        raise ValueError(f"the calibration objective of batch {index} is {objective.item()} (not finite): check that "
                         "batch for NaN/inf values and the loss; nothing was set")
    if not objective.requires_grad:
        raise ValueError(f"the calibration objective of batch {index} does not depend on any parameter (it has no "
                         "gradient); the loss_fn must compute it from model(...) without torch.no_grad/detach")


def _check_finite(sums: dict[str, torch.Tensor], index: int) -> None:
    """One check (one host sync) that the running sums are still finite after batch ``index``; they only grow, so the
    first batch that fails is the one that brought a NaN/inf in. A plain sum per tensor: NaN/inf propagate into it."""
    flags = torch.stack([t.sum().isfinite() for t in sums.values()]) if sums else None
    if flags is not None and not bool(flags.all()):
        bad = [name for name, ok in zip(sums, flags.tolist()) if not ok]
        raise ValueError(f"calibration batch {index} makes the statistics of {bad[:3]} non-finite (NaN/inf in its "
                         "layer inputs or gradients): check that batch for NaN/inf values; nothing was set")


@torch.no_grad()
def _all_reduce_(tensors: Iterable[torch.Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


@dataclass
class CalibrationStatistics:
    """Raw calibration sums turned into expectations: K-FAC factors per matrix, diagonal Fisher per other tensor."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A, S)
    fisher: dict[str, torch.Tensor]  # float64
    sources: dict[str, str]  # name -> "per_example" | "per_batch"
    num_examples: int
    num_batches: int
    objective: str


def _split_diagonal_targets(targets: list[Target]) -> tuple[dict[int, list[Target]], list[Target]]:
    """Diagonal targets whose per-example gradient comes from their layer's hooked rows (by id(module)), and the
    others (positional embeddings, tokens, custom layers), whose per-example gradient comes from a broadcast node."""
    per_layer: dict[int, list[Target]] = {}
    others: list[Target] = []
    for t in targets:
        if t.kind != "diagonal":
            continue
        local = t.name[len(t.module_name) + 1:] if t.module_name else t.name
        exact = isinstance(t.module, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and local in ("weight", "bias")
        if isinstance(t.module, nn.Conv2d) and (not isinstance(t.module.padding, tuple)
                                                or t.module.padding_mode != "zeros"):
            exact = False
        if exact:
            per_layer.setdefault(id(t.module), []).append(t)
        else:
            others.append(t)
    return per_layer, others


def collect_statistics(model: nn.Module, targets: list[Target], dataloader: Iterable, config: SRFTConfig,
                       loss_fn: Optional[LossFn] = None, num_batches: Optional[int] = None,
                       progress: bool = True) -> CalibrationStatistics:
    """Run the calibration passes and return the K-FAC factors and diagonal Fisher of ``targets``.

    The number of examples of a batch is its input batch size (:func:`_batch_size`), never a module's leading
    dimension. The model runs in eval mode (no dropout) and is put back in its previous mode afterwards. A batch whose
    objective is not a finite scalar, or that makes a statistic non-finite, raises ``ValueError`` naming its index.
    """
    factor_dtype = getattr(torch, config.factor_dtype)
    kfac_modules = {id(t.module): t for t in targets if t.kind == "kfac"}
    per_layer, others = _split_diagonal_targets(targets)
    others_by_id = {id(t.param): t for t in others}
    hooked = {id(t.module): t.module for t in targets if id(t.module) in kfac_modules or id(t.module) in per_layer}

    accumulators = {key: _Accumulator(factor_dtype) for key in kfac_modules}
    fisher_sums = {t.name: torch.zeros_like(t.param, dtype=torch.float64) for t in targets if t.kind == "diagonal"}
    per_batch_names: set[str] = set()
    records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    def forward_hook(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad and args:
            records.append((module, args[0].detach(), output))

    handles = [m.register_forward_hook(forward_hook) for m in hooked.values()]
    was_training = model.training
    model.eval()
    examples = batches = 0
    objective_name = ""
    try:
        iterator = tqdm(dataloader, total=num_batches, desc="SRFT prior", disable=not progress, leave=False)
        for batch in iterator:
            if num_batches is not None and batches >= num_batches:
                break
            B = _batch_size(batch, batches)
            records.clear()
            with torch.enable_grad():
                objective, objective_name = calibration_objective(model, batch, config, loss_fn)
                _check_objective(objective, batches)
                grads, captured = _gradients(objective, [y for _, _, y in records], others, others_by_id)
            calls: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for (module, a, _), g in zip(records, grads[:len(records)]):
                if g is not None:
                    calls.setdefault(id(module), []).append(_as_tokens(module, a.float(), g.float()))
            for key, module_calls in calls.items():
                for a_tok, g_tok in module_calls if key in accumulators else ():
                    accumulators[key].add(a_tok, g_tok, B, config.factor_token_stride, batches)
                if key in per_layer:
                    a_ex, g_ex, grouped = _per_example(module_calls, B)
                    for t in per_layer[key]:
                        fisher_sums[t.name].add_(_sum_sq_of_layer_param(t, a_ex, g_ex), alpha=B * B)
                        if not grouped:
                            per_batch_names.add(t.name)
            for t, g in zip(others, grads[len(records):]):
                if g is not None:
                    total, exact = _sum_sq_of_broadcast_param(t, g, captured.get(t.name, []), B)
                    fisher_sums[t.name] += total
                    if not exact:
                        per_batch_names.add(t.name)
            records.clear()
            # a NaN/inf (or overflowing) entry of a token row reaches the diagonal of its factor (|A_ij| <= max(A_ii,
            # A_jj)), so the diagonals stand for the factors: O(n) per check
            _check_finite({**fisher_sums, **{f"{kfac_modules[k].name} (A, S)": acc.A.diagonal().sum()
                                             + acc.S.diagonal().sum()
                                             for k, acc in accumulators.items() if acc.A is not None}}, batches)
            examples += B
            batches += 1
    finally:
        for h in handles:
            h.remove()
        records.clear()
        model.train(was_training)

    if batches == 0:
        raise ValueError("estimate_prior got no calibration batch: the dataloader is empty (or num_batches=0)")

    # one all-reduce of every sum: several processes give the single-process result over the union of their shards
    device = targets[0].param.device
    counts = torch.tensor([examples, batches], dtype=torch.float64, device=device)
    fell_back = torch.tensor([float(name in per_batch_names) for name in fisher_sums], dtype=torch.float64,
                             device=device)  # a per-batch fallback on any process marks the entry
    sums = [counts, fell_back] + list(fisher_sums.values())
    for key, acc in accumulators.items():
        if acc.A is None:  # a module some rank never called still takes part in the reduction
            m, n = kfac_modules[key].matrix_shape
            acc.A = torch.zeros(n, n, dtype=factor_dtype, device=device)
            acc.S = torch.zeros(m, m, dtype=factor_dtype, device=device)
        acc.rows = acc.rows.to(device)
        sums += [acc.A, acc.S, acc.rows]
    _all_reduce_(sums)
    examples, batches = int(counts[0]), int(counts[1])

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, acc in accumulators.items():
        t = kfac_modules[key]
        if float(acc.rows) == 0:
            raise ValueError(f"module {t.module_name!r} (parameter {t.name!r}) was never called with gradients "
                             "during calibration; exclude it with exclude_modules or check the loss_fn")
        factors[t.name] = (symmetrize_(acc.A).div_(float(acc.rows)), symmetrize_(acc.S).div_(examples))
    fisher = {name: total / examples for name, total in fisher_sums.items()}
    bad = [name for name, (A, S) in factors.items() if not (torch.isfinite(A).all() and torch.isfinite(S).all())]
    bad += [name for name, f in fisher.items() if not torch.isfinite(f).all()]
    if bad:
        raise ValueError(f"the calibration statistics of {bad[:5]} are not finite (overflow); nothing was set")
    sources = {name: ("per_batch" if flag > 0 else "per_example") for name, flag in zip(fisher_sums, fell_back.tolist())}
    return CalibrationStatistics(factors, fisher, sources, examples, batches, objective_name)


def estimate_prior_significance(model: nn.Module, targets: list[Target], dataloader: Iterable, config: SRFTConfig,
                                loss_fn: Optional[LossFn] = None, num_batches: Optional[int] = None,
                                progress: bool = True) -> PriorSignificance:
    """Estimate the prior significance of ``targets`` at the model's current weights.

    Example:
        >>> import torch, torch.nn as nn
        >>> from srft_peft import SRFTConfig
        >>> from srft_peft.targeting import select_targets
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> cfg = SRFTConfig(target_modules=["0"], prior_rank=2)
        >>> prior = estimate_prior_significance(net, select_targets(net, ["0"], None), [torch.randn(16, 4)], cfg,
        ...                                     progress=False)
        >>> prior.entries["0.weight"].U.shape
        torch.Size([8, 2])
    """
    stats = collect_statistics(model, targets, dataloader, config, loss_fn, num_batches, progress)
    entries: dict[str, KFACSignificance | DiagonalSignificance] = {}
    for t in targets:
        if t.name in stats.factors:
            A, S = stats.factors[t.name]
            entries[t.name] = KFACSignificance.from_factors(t.name, A, S, config.prior_rank, config.prior_energy,
                                                            config.damping, solver=config.eigen_solver)
        else:
            entries[t.name] = DiagonalSignificance(t.name, stats.fisher[t.name], stats.sources[t.name])
    unused = [name for name, e in entries.items() if isinstance(e, DiagonalSignificance) and not e.fisher.any()]
    if unused:
        warnings.warn(f"SRFT: no calibration gradient reached {unused[:5]}{' ...' if len(unused) > 5 else ''}; their "
                      "prior significance is zero", stacklevel=2)
    prior = PriorSignificance(entries, num_examples=stats.num_examples, num_batches=stats.num_batches,
                              objective=stats.objective)
    return prior.normalize()


def _batch_size(batch: Any, index: int = 0) -> int:
    """The number of examples in a calibration batch: the leading dimension of the tensor itself, of the first element
    of a tuple/list, or of the first tensor (with a dimension) of a mapping."""
    if isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if isinstance(batch, Mapping):
        batch = next((v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0), None)
    if isinstance(batch, torch.Tensor) and batch.dim() > 0 and batch.shape[0] > 0:
        return batch.shape[0]
    what = f"tensor of shape {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
    raise TypeError(f"cannot tell the number of examples of calibration batch {index}: expected a tensor, a tuple/list "
                    f"whose first element is the input tensor, or a mapping holding a tensor, with the examples along "
                    f"dimension 0; got {what}")
