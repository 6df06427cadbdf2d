"""The prior term R_prior: its value (autograd, for ``apply="loss"``), its fused gradient (for ``apply="grad"``) and
its decoupled or proximal pull (``prior_application``).

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
from typing import Optional, Union

import torch

from ..significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance
from .layout import STATE_DTYPE, FlatLayout

#: A per-parameter step size c = eta * lambda_p: a number, or a 0-dim tensor on the parameters' device (a tensor lr).
Scale = Union[float, torch.Tensor]


def scaled(omega: torch.Tensor, scales: Sequence[Scale]) -> torch.Tensor:
    """``omega`` (L, k_out, k_in) times one scale per member: a single multiplication when the members share one."""
    first = scales[0]
    if all(s is first for s in scales):
        return omega * first
    return torch.stack(torch._foreach_mul(list(omega.unbind(0)), list(scales)))


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
        self._scratch: Optional[list[torch.Tensor]] = None  # proximal c F / (1 + c F), allocated on first use

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
        """Write grad R_prior = F (theta - theta0) into ``workspace`` (a flat buffer in this term's layout), no autograd
        graph: :meth:`pull_into_` without a step size.

        Reads each weight once (U^T W through ``_foreach_mm``) and writes each gradient once (one ``bmm`` per group).
        The K-FAC matrices in ``params`` must be float32 (the engine passes a float32 copy of half-precision weights).
        ``params`` may be ``workspace``'s own views (it is then overwritten in place).
        """
        self.pull_into_(params, workspace)

    @torch.no_grad()
    def pull_into_(self, params: Sequence[torch.Tensor], workspace: torch.Tensor, scales: Optional[Sequence[Scale]] = None,
                   proximal: bool = False) -> None:
        """Write the prior's pull on ``params`` into ``workspace``, with c = ``scales[i]`` (eta * lambda_p) per parameter:

        - ``proximal=False``: c F (theta - theta0) (``scales=None``: c = 1, the gradient of R_prior);
        - ``proximal=True``: (theta - theta0) - (I + c F)^-1 (theta - theta0), i.e. the components U^T (W - W0) V times
          c omega / (1 + c omega) mapped back by U . V^T, and (theta - theta0) c F / (1 + c F) for diagonal entries.

        ``theta - pull`` is then the decoupled step (applied at theta_t) or the proximal step (applied at theta').
        """
        views = self.layout.views(workspace)
        for g, U, Ut, V, Vt, omega, P0 in self.groups:
            UtW = torch.stack(torch._foreach_mm(list(Ut.unbind(0)), [params[i].view(g.matrix) for i in g.members]))
            M = torch.bmm(UtW, V)
            weight = omega if scales is None else scaled(omega, [scales[i] for i in g.members])
            if proximal:
                weight = weight / (1.0 + weight)
            M.sub_(P0).mul_(weight)
            torch.bmm(torch.bmm(U, M), Vt, out=g.stack(workspace))
        if not self.diag_index:
            return
        diag_views = [views[i] for i in self.diag_index]
        torch._foreach_copy_(diag_views, [params[i] for i in self.diag_index])
        torch._foreach_sub_(diag_views, self.theta0)
        if scales is None or not proximal:
            torch._foreach_mul_(diag_views, self.fisher)
            if scales is not None:
                torch._foreach_mul_(diag_views, [scales[i] for i in self.diag_index])
            return
        if self._scratch is None:  # c F / (1 + c F) needs one buffer of the diagonal entries' size, allocated once
            self._scratch = [torch.empty_like(f) for f in self.fisher]
        torch._foreach_copy_(self._scratch, self.fisher)
        torch._foreach_mul_(self._scratch, [scales[i] for i in self.diag_index])
        torch._foreach_mul_(diag_views, self._scratch)
        torch._foreach_add_(self._scratch, 1.0)
        torch._foreach_div_(diag_views, self._scratch)

    @torch.no_grad()
    def drift_sq(self, params: Sequence[torch.Tensor], workspace: torch.Tensor) -> torch.Tensor:
        """||U^T (W - W0) V||^2 summed over the K-FAC matrices plus ||theta - theta0||^2 over the diagonal entries: the
        squared drift along the kept directions (a 0-dim float32 tensor, no host sync; ``workspace`` is scratch)."""
        total = workspace.new_zeros(())
        for g, _U, Ut, V, _Vt, _omega, P0 in self.groups:
            UtW = torch.stack(torch._foreach_mm(list(Ut.unbind(0)), [params[i].view(g.matrix) for i in g.members]))
            total = total + torch.bmm(UtW, V).sub_(P0).square_().sum()
        if self.diag_index:
            views = self.layout.views(workspace)
            diag_views = [views[i] for i in self.diag_index]
            torch._foreach_copy_(diag_views, [params[i] for i in self.diag_index])
            torch._foreach_sub_(diag_views, self.theta0)
            total = total + torch.stack(torch._foreach_norm(diag_views)).square().sum()
        return total

    def nbytes(self) -> int:
        """Bytes of the significance and anchor tensors this term holds."""
        tensors = [t for _g, *group in self.groups for t in group] + self.fisher + self.theta0 + (self._scratch or [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def to_(self, device: torch.device) -> None:
        """Move every tensor of this term to ``device`` (their dtype stays float32)."""
        self.layout.device = device
        self.groups = [(g, *(t.to(device) for t in group)) for g, *group in self.groups]
        self.fisher = [t.to(device) for t in self.fisher]
        self.theta0 = [t.to(device) for t in self.theta0]
        self._scratch = None

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
