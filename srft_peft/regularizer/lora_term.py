"""The prior term on LoRA adapters, in the tangent space of the base weight, without materialising the update.

A LoRA layer computes ``W x + s B A x`` with the base weight W (m x n) frozen and the adapter A (r x n), B (m x r)
trained; its effective update is dW = s B A. The prior of W (U, V, omega from the base layer's K-FAC factors) penalises
that update as it would penalise a full fine-tune:

    R(A, B) = 1/2 || sqrt(omega) * (U^T (s B A) V - P0) ||^2 = 1/2 || sqrt(omega) * (s (U^T B)(A V) - P0) ||^2

with P0 = s (U^T B0)(A0 V) at attach time (0 for the usual B0 = 0). With M = omega * (s (U^T B)(A V) - P0):

    dR/dB = s U M (A V)^T                  dR/dA = s (U^T B)^T M V^T

All O((m + n) r k) per layer; adapters of the same (m, n, r, k_out, k_in) are one batched matmul, like `PriorTerm`.
`CombinedPriorTerm` puts this term and a `PriorTerm` over the other regularized parameters behind the `PriorTerm`
interface (``layout``, ``penalty``, ``gradient_into_``, ``drift_sq``, ``to_``, ``state_tensors``,
``load_state_tensors``), so the engine uses it unchanged. On adapters the prior enters the update as a gradient only
(``prior_application="gradient"``): the proximal step has no closed form in (A, B).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..significance.prior import KFACSignificance, PriorSignificance
from ..targeting import LORA_KINDS
from .layout import STATE_DTYPE, FlatLayout, Group
from .prior_term import PriorTerm, group_key


@dataclass
class LoRAPair:
    """One adapter of one LoRA layer: indices of its A and B in the regularized-parameter list, scale, prior entry."""

    a: int
    b: int
    scale: float
    prior_name: str


def lora_pairs(targets: Sequence[Any]) -> list[LoRAPair]:
    """Pair the ``lora_A``/``lora_B`` targets of each (LoRA layer, adapter). A factor whose partner is not among the
    targets raises (`srft_peft.targeting` only emits complete pairs)."""
    halves: dict[tuple[str, str], dict[str, int]] = {}
    for i, t in enumerate(targets):
        if t.kind in LORA_KINDS:
            halves.setdefault((t.module_name, lora_adapter_name(t)), {})[t.kind] = i
    pairs = []
    for (module_name, adapter), h in halves.items():
        if set(h) != set(LORA_KINDS):
            raise ValueError(f"LoRA layer {module_name!r} adapter {adapter!r}: only {sorted(h)} is regularized; "
                             "lora_A and lora_B must be regularized together")
        module = targets[h["lora_A"]].module
        pairs.append(LoRAPair(h["lora_A"], h["lora_B"], float(module.scaling[adapter]),
                              targets[h["lora_A"]].prior_name))
    return pairs


def lora_adapter_name(target: Any) -> str:
    """The adapter name of a LoRA factor target, from ``<layer>.lora_A.<adapter>.weight``."""
    local = target.name[len(target.module_name) + 1:]
    return local.split(".", 1)[1].rsplit(".", 1)[0]


class LoRAPriorTerm:
    """R_prior on LoRA adapters, anchored at the adapters' values when it is built."""

    def __init__(self, params: Sequence[torch.Tensor], pairs: Sequence[LoRAPair], prior: PriorSignificance,
                 layout: FlatLayout) -> None:
        missing = [p.prior_name for p in pairs if p.prior_name not in prior.entries]
        if missing:
            raise ValueError(f"the prior significance has no entry for the LoRA base weight {missing[0]!r}")
        self.layout = layout
        device, dtype = params[pairs[0].a].device, STATE_DTYPE
        by_first = {g.members[0]: g for g in layout.groups}
        self.groups = []
        with torch.no_grad():
            buckets: dict[tuple, list[LoRAPair]] = {}
            for p in pairs:
                buckets.setdefault(lora_group_key(params, p, prior), []).append(p)
            for members in buckets.values():
                members.sort(key=lambda p: p.a)
                entries = [prior.entries[p.prior_name] for p in members]
                ga, gb = by_first[members[0].a], by_first[members[0].b]
                if [p.a for p in members] != ga.members or [p.b for p in members] != gb.members:
                    raise RuntimeError("LoRA layout groups do not match the adapter pairs")
                U = torch.stack([e.U for e in entries]).to(device, dtype)
                V = torch.stack([e.V for e in entries]).to(device, dtype)
                omega = torch.stack([e.omega for e in entries]).to(device, dtype)
                s = torch.tensor([p.scale for p in members], device=device, dtype=dtype).view(-1, 1, 1)
                Ut, Vt = U.transpose(1, 2).contiguous(), V.transpose(1, 2).contiguous()
                A0 = torch.stack([params[p.a].detach() for p in members]).to(dtype)
                B0 = torch.stack([params[p.b].detach() for p in members]).to(dtype)
                P0 = s * torch.bmm(torch.bmm(Ut, B0), torch.bmm(A0, V))
                self.groups.append((ga, gb, [p.a for p in members], [p.b for p in members], U, Ut, V, Vt, omega, s, P0))

    def penalty(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """R(A, B) summed over the adapters, with autograd."""
        total = params[0].new_zeros((), dtype=torch.float32)
        for _ga, _gb, ia, ib, _U, Ut, V, _Vt, omega, s, P0 in self.groups:
            A = torch.stack([params[i] for i in ia]).to(Ut.dtype)
            B = torch.stack([params[i] for i in ib]).to(Ut.dtype)
            T = s * torch.bmm(torch.bmm(Ut, B), torch.bmm(A, V)) - P0
            total = total + 0.5 * (omega * T * T).sum(dtype=torch.float32)
        return total

    @torch.no_grad()
    def gradient_into_(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> None:
        """Write dR/dA and dR/dB into the adapters' slices of ``workspace`` (no autograd graph); the adapters are read
        through a copy into ``workspace``, so they may be in any dtype."""
        views = self.layout.views(workspace)
        idx = [i for g in self.groups for i in g[2] + g[3]]
        torch._foreach_copy_([views[i] for i in idx], [params[i] for i in idx])
        for ga, gb, _ia, _ib, U, Ut, V, Vt, omega, s, P0 in self.groups:
            A, B = ga.stack(workspace), gb.stack(workspace)  # (L, r, n), (L, m, r): the current values
            UtB = torch.bmm(Ut, B)  # (L, k_out, r)
            AV = torch.bmm(A, V)  # (L, r, k_in)
            M = torch.bmm(UtB, AV).mul_(s).sub_(P0).mul_(omega).mul_(s)  # s * omega * (s (U^T B)(A V) - P0)
            torch.bmm(U, torch.bmm(M, AV.transpose(1, 2)), out=B)  # dR/dB = s U M (A V)^T
            torch.bmm(torch.bmm(UtB.transpose(1, 2), M), Vt, out=A)  # dR/dA = s (U^T B)^T M V^T

    @torch.no_grad()
    def drift_sq(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> torch.Tensor:
        """||U^T (s B A) V - P0||^2 summed over the adapters: the squared drift of the effective update along the kept
        directions (0-dim, no host sync; ``workspace`` unused)."""
        total = workspace.new_zeros(())
        for _ga, _gb, ia, ib, _U, Ut, V, _Vt, _omega, s, P0 in self.groups:
            A = torch.stack([params[i] for i in ia]).to(Ut.dtype)
            B = torch.stack([params[i] for i in ib]).to(Ut.dtype)
            total = total + (s * torch.bmm(torch.bmm(Ut, B), torch.bmm(A, V)) - P0).square().sum()
        return total

    def nbytes(self) -> int:
        """Bytes of the significance and anchor tensors this term holds."""
        return sum(t.numel() * t.element_size() for g in self.groups for t in g if isinstance(t, torch.Tensor))

    def to_(self, device: torch.device) -> None:
        """Move every tensor of this term to ``device`` (their dtype stays float32)."""
        self.layout.device = device
        self.groups = [tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in g) for g in self.groups]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The anchors P0, one per group of adapters."""
        return {f"lora{j}.P0": g[-1] for j, g in enumerate(self.groups)}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for j, g in enumerate(self.groups):
            g[-1].copy_(tensors[f"lora{j}.P0"])


def lora_group_key(params: Sequence[torch.Tensor], pair: LoRAPair, prior: PriorSignificance) -> tuple:
    """Adapters with equal (m, n, r, k_out, k_in) share one batched matmul."""
    entry = prior.entries[pair.prior_name]
    if not isinstance(entry, KFACSignificance):
        raise ValueError(f"the prior of the LoRA base weight {pair.prior_name!r} must be a K-FAC entry, got "
                         f"{type(entry).__name__}")
    r, n = params[pair.a].shape
    m = params[pair.b].shape[0]
    if entry.U.shape[0] != m or entry.V.shape[0] != n:
        raise ValueError(f"the prior of {pair.prior_name!r} is for a {entry.U.shape[0]}x{entry.V.shape[0]} weight, the "
                         f"adapter's update is {m}x{n}")
    return (m, n, r, entry.U.shape[1], entry.V.shape[1])


def _subset_layout(layout: FlatLayout, index: Sequence[int]) -> FlatLayout:
    """The part of ``layout`` for the parameters at ``index`` (renumbered 0..), same offsets into the same buffer."""
    position = {i: k for k, i in enumerate(index)}
    groups = [Group(g.key, [position[i] for i in g.members], g.offset, g.matrix) for g in layout.groups
              if g.members[0] in position]
    return FlatLayout([layout.shapes[i] for i in index], [layout.offsets[i] for i in index], groups, layout.numel,
                      layout.device, layout.dtype)


class CombinedPriorTerm:
    """A `PriorTerm` over the ordinary regularized parameters and a `LoRAPriorTerm` over the adapters, sharing one
    flat layout; presents the `PriorTerm` interface to the engine."""

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str], pairs: Sequence[LoRAPair],
                 prior: PriorSignificance) -> None:
        in_pairs = {i for p in pairs for i in (p.a, p.b)}
        self.plain_index = [i for i in range(len(params)) if i not in in_pairs]
        keys: list[Optional[tuple]] = [None] * len(params)
        for i in self.plain_index:
            if names[i] not in prior.entries:
                raise ValueError(f"the prior significance has no entry for parameter {names[i]!r}")
            keys[i] = group_key(prior.entries[names[i]])
        for p in pairs:
            k = lora_group_key(params, p, prior)
            keys[p.a], keys[p.b] = ("lora_A", *k), ("lora_B", *k)
        self.layout = FlatLayout.build(params, keys)
        self.plain: Optional[PriorTerm] = None
        if self.plain_index:
            self.plain = PriorTerm([params[i] for i in self.plain_index], [names[i] for i in self.plain_index], prior,
                                   layout=_subset_layout(self.layout, self.plain_index))
        self.lora = LoRAPriorTerm(params, pairs, prior, self.layout)

    def _plain_params(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [params[i] for i in self.plain_index]

    def penalty(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        total = self.lora.penalty(params)
        if self.plain is not None:
            total = total + self.plain.penalty(self._plain_params(params))
        return total

    @torch.no_grad()
    def gradient_into_(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> None:
        if self.plain is not None:
            self.plain.gradient_into_(self._plain_params(params), workspace)
        self.lora.gradient_into_(params, workspace)

    @torch.no_grad()
    def drift_sq(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> torch.Tensor:
        total = self.lora.drift_sq(params, workspace)
        if self.plain is not None:
            total = total + self.plain.drift_sq(self._plain_params(params), workspace)
        return total

    def nbytes(self) -> int:
        return self.lora.nbytes() + (self.plain.nbytes() if self.plain is not None else 0)

    def to_(self, device: torch.device) -> None:
        self.layout.device = device
        self.lora.to_(device)
        if self.plain is not None:
            self.plain.to_(device)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = self.lora.state_tensors()
        if self.plain is not None:
            out.update(self.plain.state_tensors())
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.plain is not None:
            self.plain.load_state_tensors(tensors)
        self.lora.load_state_tensors(tensors)


def build_prior_term(targets: Sequence[Any], params: Sequence[torch.Tensor], names: Sequence[str],
                     prior: PriorSignificance) -> PriorTerm | CombinedPriorTerm:
    """`PriorTerm` when no target is a LoRA factor (the behaviour without adapters, unchanged), else the combined term."""
    pairs = lora_pairs(targets)
    if not pairs:
        return PriorTerm(params, names, prior)
    return CombinedPriorTerm(params, names, pairs, prior)
