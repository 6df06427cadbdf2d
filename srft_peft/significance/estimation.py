"""Measuring prior significance at the pretrained weights on calibration (pretraining-domain) batches.

One forward pass per batch records the inputs ``a`` and outputs ``y`` of the hooked layers; one
``torch.autograd.grad`` call returns dObjective/dy for all of them (model ``.grad`` fields are never touched). From these:

* K-FAC factors per Linear/Conv2d weight, token-level ("expand", every token a sample):
  ``A = sum a a^T / tokens`` and ``S = sum g g^T / examples`` with ``g`` the per-example gradient
  (dObjective/dy times the batch size, the objective being a batch mean).
* The diagonal empirical Fisher ``E_n[(dl_n/dtheta)^2]`` from exact per-example gradients for Linear/Conv2d biases (and
  weights with ``prior_estimator="diagonal"``) and LayerNorm weights/biases; for every other parameter (positional
  embeddings, tokens, custom layers) from the batch gradient: ``B * (dL/dtheta)^2`` per batch ("per_batch"), which
  equals the Fisher diagonal when per-example gradients are uncorrelated with mean zero.

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


class _Accumulator:
    """Running K-FAC sums of one hooked module: sum a a^T, sum g g^T, and (tokens, examples) counts."""

    def __init__(self) -> None:
        self.A: Optional[torch.Tensor] = None
        self.S: Optional[torch.Tensor] = None
        self.counts = torch.zeros(2, dtype=torch.float64)

    def add(self, a_tok: torch.Tensor, g_tok: torch.Tensor, dtype: torch.dtype, stride: int = 1, offset: int = 0) -> None:
        """Add one batch; with ``stride`` k > 1 only token rows offset, offset + k, ... enter the products, which are
        scaled by (all rows / kept rows) so that the sums stay unbiased."""
        a2, g2 = a_tok.reshape(-1, a_tok.shape[-1]), g_tok.reshape(-1, g_tok.shape[-1])
        rows = a2.shape[0]
        if stride > 1 and rows > 1:
            start = offset % min(stride, rows)
            a2, g2 = a2[start::stride], g2[start::stride]
        scale = rows / a2.shape[0]
        A, S = (a2.T @ a2).to(dtype), (g2.T @ g2).to(dtype)
        if scale != 1.0:
            A, S = A * scale, S * scale
        self.A = A if self.A is None else self.A + A
        self.S = S if self.S is None else self.S + S
        self.counts = self.counts.to(A.device)
        self.counts += torch.tensor([rows, a_tok.shape[0]], dtype=torch.float64, device=A.device)


def _as_tokens(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example token matrices: a (B, T, n_in), g (B, T, n_out); a Conv2d is a Linear over unfolded patches."""
    B = a.shape[0]
    if isinstance(module, nn.Conv2d):
        a = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
        g = g.flatten(2).transpose(1, 2)
    elif isinstance(module, nn.LayerNorm):
        a = F.layer_norm(a, module.normalized_shape, None, None, module.eps)
    return a.reshape(B, -1, a.shape[-1]), g.reshape(B, -1, g.shape[-1])


def _sum_sq_per_example_outer(g: torch.Tensor, a: torch.Tensor, chunk_elements: int = 1 << 25) -> torch.Tensor:
    """sum_n (g_n^T a_n)^2 for g (B, T, m), a (B, T, n), chunked over examples to bound memory."""
    B, _, m = g.shape
    n = a.shape[-1]
    step = max(1, chunk_elements // max(m * n, 1))
    total = torch.zeros(m, n, dtype=torch.float32, device=g.device)
    for start in range(0, B, step):
        per_example = torch.einsum("btm,btn->bmn", g[start:start + step], a[start:start + step])
        total += per_example.pow(2).sum(0)
    return total


@torch.no_grad()
def _all_reduce_(tensors: Iterable[torch.Tensor]) -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


@dataclass
class CalibrationStatistics:
    """Raw calibration sums turned into expectations: K-FAC factors per matrix, diagonal Fisher per other tensor."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A, S)
    fisher: dict[str, torch.Tensor]
    sources: dict[str, str]  # name -> "per_example" | "per_batch"
    num_examples: int
    num_batches: int
    objective: str


def collect_statistics(model: nn.Module, targets: list[Target], dataloader: Iterable, config: SRFTConfig,
                       loss_fn: Optional[LossFn] = None, num_batches: Optional[int] = None,
                       progress: bool = True) -> CalibrationStatistics:
    """Run the calibration passes and return the K-FAC factors and diagonal Fisher of ``targets``.

    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    factor_dtype = getattr(torch, config.factor_dtype)
    kfac_modules = {id(t.module): t for t in targets if t.kind == "kfac"}
    per_example_diag: dict[int, list[Target]] = {}
    per_batch: list[Target] = []
    for t in targets:
        if t.kind != "diagonal":
            continue
        local = t.name[len(t.module_name) + 1:] if t.module_name else t.name
        exact = isinstance(t.module, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and local in ("weight", "bias")
        if isinstance(t.module, nn.Conv2d) and not isinstance(t.module.padding, tuple):
            exact = False
        if exact:
            per_example_diag.setdefault(id(t.module), []).append(t)
        else:
            per_batch.append(t)
    hooked = {id(t.module): t.module for t in targets
              if id(t.module) in kfac_modules or id(t.module) in per_example_diag}

    accumulators = {key: _Accumulator() for key in kfac_modules}
    fisher_sums = {t.name: torch.zeros_like(t.param, dtype=torch.float32) for t in targets if t.kind == "diagonal"}
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
            records.clear()
            with torch.enable_grad():
                objective, objective_name = calibration_objective(model, batch, config, loss_fn)
                if objective.dim() != 0:
                    raise ValueError(f"the calibration objective must be a scalar, got shape {tuple(objective.shape)}")
                inputs = [y for _, _, y in records] + [t.param for t in per_batch]
                grads = torch.autograd.grad(objective, inputs, allow_unused=True) if inputs else []
            batch_size = None
            for (module, a, _), g in zip(records, grads[:len(records)]):
                if g is None:
                    continue
                B = a.shape[0]
                batch_size = batch_size or B
                a_tok, g_tok = _as_tokens(module, a.float(), g.float() * B)
                key = id(module)
                if key in accumulators:
                    accumulators[key].add(a_tok, g_tok, factor_dtype, config.factor_token_stride, batches)
                for t in per_example_diag.get(key, []):
                    if t.name.endswith("bias"):
                        fisher_sums[t.name] += g_tok.sum(1).pow(2).sum(0)
                    elif isinstance(module, nn.LayerNorm):
                        fisher_sums[t.name] += (g_tok * a_tok).sum(1).pow(2).sum(0)
                    else:
                        fisher_sums[t.name] += _sum_sq_per_example_outer(g_tok, a_tok).view_as(t.param)
            if batch_size is None:
                batch_size = _batch_size(batch)
            for t, g in zip(per_batch, grads[len(records):]):
                if g is not None:
                    fisher_sums[t.name] += batch_size * g.float().pow(2)
            records.clear()
            examples += batch_size
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
    sums = [counts] + list(fisher_sums.values())
    for acc in accumulators.values():
        if acc.A is None:  # a module some rank never called still takes part in the reduction
            t = kfac_modules[next(k for k, a in accumulators.items() if a is acc)]
            m, n = t.matrix_shape
            acc.A = torch.zeros(n, n, dtype=factor_dtype, device=device)
            acc.S = torch.zeros(m, m, dtype=factor_dtype, device=device)
        sums += [acc.A, acc.S, acc.counts]
    _all_reduce_(sums)
    examples, batches = int(counts[0]), int(counts[1])

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, acc in accumulators.items():
        t = kfac_modules[key]
        tokens, n_examples = float(acc.counts[0]), float(acc.counts[1])
        if tokens == 0:
            raise ValueError(f"module {t.module_name!r} (parameter {t.name!r}) was never called with gradients "
                             "during calibration; exclude it with exclude_modules or check the loss_fn")
        factors[t.name] = (acc.A / tokens, acc.S / n_examples)
    per_batch_names = {t.name for t in per_batch}
    sources = {name: ("per_batch" if name in per_batch_names else "per_example") for name in fisher_sums}
    fisher = {name: total / (batches if sources[name] == "per_batch" else examples)
              for name, total in fisher_sums.items()}
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


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else []
    for v in values:
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    return 1
