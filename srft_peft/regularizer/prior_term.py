"""The prior term R_prior: its value (autograd, for ``apply="loss"``) and its fused gradient (for ``apply="grad"``).

K-FAC matrices: R(W) = 1/2 || sqrt(omega) * (U^T (W - W0) V) ||^2, grad = U (omega * (U^T W V - P0)) V^T, with
P0 = U^T W0 V precomputed, so W0 itself is never stored. Matrices of one shape are one batched matmul.
Other parameters: R(theta) = 1/2 sum F (theta - theta0)^2, grad = F (theta - theta0), with ``_foreach`` ops.
U, V, omega, P0, F and theta0 are float32 (:data:`~.layout.STATE_DTYPE`) whatever the parameters' dtype.

Example:
    >>> import torch
    >>> from srft_peft.significance import DiagonalSignificance, PriorSignificance
    >>> p = torch.nn.Parameter(torch.ones(3))
    >>> term = PriorTerm([p], ["p"], PriorSignificance({"p": DiagonalSignificance("p", torch.full((3,), 2.0))}))
    >>> with torch.no_grad(): _ = p.add_(1.0)
    >>> float(term.penalty([p]).detach())
    3.0
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Optional

import torch

from ..significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance
from .layout import STATE_DTYPE, FlatLayout


def group_key(entry: KFACSignificance | DiagonalSignificance) -> Optional[Hashable]:
    """Matrices with equal (m, n, k_out, k_in) share one batched matmul; None for diagonal entries."""
    if isinstance(entry, KFACSignificance):
        return (entry.U.shape[0], entry.V.shape[0], entry.U.shape[1], entry.V.shape[1])
    return None


class PriorTerm:
    """R_prior over the regularized parameters, anchored at their values when it is built."""

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str], prior: PriorSignificance,
                 layout: Optional[FlatLayout] = None) -> None:
        missing = [n for n in names if n not in prior.entries]
        if missing:
            raise ValueError(f"the prior significance has no entry for parameter {missing[0]!r}")
        entries = [prior.entries[n] for n in names]
        self.layout = layout or FlatLayout.build(params, [group_key(e) for e in entries])
        device, dtype = params[0].device, STATE_DTYPE
        self.groups = []
        with torch.no_grad():
            for g in self.layout.groups:
                members = [entries[i] for i in g.members]
                U = torch.stack([e.U for e in members]).to(device, dtype)
                V = torch.stack([e.V for e in members]).to(device, dtype)
                omega = torch.stack([e.omega for e in members]).to(device, dtype)
                W0 = torch.stack([params[i].detach().reshape(g.matrix) for i in g.members]).to(dtype)
                Ut, Vt = U.transpose(1, 2).contiguous(), V.transpose(1, 2).contiguous()
                P0 = torch.bmm(torch.bmm(Ut, W0), V)
                self.groups.append((g, U, Ut, V, Vt, omega, P0))
            in_group = {i for g in self.layout.groups for i in g.members}
            self.diag_index = [i for i in range(len(params)) if i not in in_group]
            self.fisher = [entries[i].fisher.to(device, dtype).reshape(params[i].shape) for i in self.diag_index]
            self.theta0 = [params[i].detach().to(dtype, copy=True) for i in self.diag_index]

    # ----------------------------------------------------------------------------------------------------------------
    def penalty(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        """R_prior(params) with autograd (used by ``apply="loss"`` and for logging), computed in float32."""
        total = params[0].new_zeros((), dtype=torch.float32)
        for g, _U, Ut, V, _Vt, omega, P0 in self.groups:
            W = torch.stack([params[i].reshape(g.matrix) for i in g.members]).to(Ut.dtype)
            T = torch.bmm(torch.bmm(Ut, W), V) - P0
            total = total + 0.5 * (omega * T * T).sum(dtype=torch.float32)
        for i, F, t0 in zip(self.diag_index, self.fisher, self.theta0):
            d = params[i].to(t0.dtype) - t0
            total = total + 0.5 * (F * d * d).sum(dtype=torch.float32)
        return total

    @torch.no_grad()
    def gradient_into_(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> None:
        """Write grad R_prior into ``workspace`` (a flat buffer in this term's layout), no autograd graph.

        Reads each weight once (U^T W through ``_foreach_mm``) and writes each gradient once (one ``bmm`` per group).
        The K-FAC matrices in ``params`` must be float32 (the engine passes a float32 copy of half-precision weights).
        """
        views = self.layout.views(workspace)
        for g, U, Ut, V, Vt, omega, P0 in self.groups:
            UtW = torch.stack(torch._foreach_mm(list(Ut.unbind(0)), [params[i].view(g.matrix) for i in g.members]))
            M = torch.bmm(UtW, V)
            M.sub_(P0).mul_(omega)
            torch.bmm(torch.bmm(U, M), Vt, out=g.stack(workspace))
        if self.diag_index:
            diag_views = [views[i] for i in self.diag_index]
            torch._foreach_copy_(diag_views, [params[i] for i in self.diag_index])
            torch._foreach_sub_(diag_views, self.theta0)
            torch._foreach_mul_(diag_views, self.fisher)

    def nbytes(self) -> int:
        """Bytes of the significance and anchor tensors this term holds."""
        tensors = [t for _g, *group in self.groups for t in group] + self.fisher + self.theta0
        return sum(t.numel() * t.element_size() for t in tensors)

    def to_(self, device: torch.device) -> None:
        """Move every tensor of this term to ``device`` (their dtype stays float32)."""
        self.layout.device = device
        self.groups = [(g, *(t.to(device) for t in group)) for g, *group in self.groups]
        self.fisher = [t.to(device) for t in self.fisher]
        self.theta0 = [t.to(device) for t in self.theta0]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The anchor data this term holds (for training checkpoints): P0 per group and theta0 per diagonal parameter."""
        out = {f"group{j}.P0": P0 for j, (*_, P0) in enumerate(self.groups)}
        out.update({f"diag{k}.theta0": t for k, t in enumerate(self.theta0)})
        return out

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for j, group in enumerate(self.groups):
            group[6].copy_(tensors[f"group{j}.P0"])
        for k, t in enumerate(self.theta0):
            t.copy_(tensors[f"diag{k}.theta0"])
