"""Two BASELINES for the cost benchmarks. Not library code: written the way such regularizers are commonly written, so
that ``bench_overhead.py`` can compare SRFT against them. Do not import them from ``srft_peft``.

* :class:`EWCLoss` - an EWC-style loss term as many training scripts write it: every step, a Python loop adds
  ``(F * (p - p0) ** 2).sum()`` per parameter to the loss (autograd then differentiates it). With the convention of
  SRFT's diagonal prior, the value is ``lam / 2 * sum F (p - p0)^2``, i.e. exactly ``lam * R_prior`` of
  ``SRFTConfig(prior_estimator="diagonal")`` with the same Fisher and anchor (``tests/test_baselines.py`` checks it).
  Persistent memory: F and p0, 2x the regularized parameters.
* :class:`AuthorsStep` - the step of the SRFT authors' released code (SRTrack), re-implemented from its description in
  ``SRFT_METHOD.md``: after every optimizer step, for every regularized tensor,
  ``v = (g_t^2 + g_{t-1}^2) / 2`` (g_t^2 alone on the first step), ``v = v / max(v)``,
  ``m = linspace(0.25, 0.65, N)[argsort(v)]`` (a sort of every tensor, every step; ``argsort`` with its default,
  unstable, algorithm, and the gather indexing of the released code) and ``p <- p - m * (p - p_prev)``, with p_prev
  the weights before the step. A Python loop with several kernels per tensor.
  Persistent memory: p_prev and the previous g^2, 2x the regularized parameters.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(4))
    >>> ewc = EWCLoss([p], [torch.ones(4)], lam=2.0)
    >>> with torch.no_grad(): _ = p.add_(1.0)
    >>> ewc().item()
    4.0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def tensor_bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class EWCLoss:
    """``lam / 2 * sum_p (F_p * (p - p0_p) ** 2).sum()``, anchored at the parameters' values when built."""

    def __init__(self, params: Sequence[torch.Tensor], fisher: Sequence[torch.Tensor], lam: float = 1.0) -> None:
        if len(params) != len(fisher):
            raise ValueError(f"{len(params)} parameters but {len(fisher)} Fisher tensors")
        self.params = list(params)
        self.fisher = [F.detach().to(p.device, p.dtype).reshape(p.shape).clone() for p, F in zip(params, fisher)]
        self.anchor = [p.detach().clone() for p in params]
        self.lam = lam

    def __call__(self) -> torch.Tensor:
        loss = 0.0
        for p, F, p0 in zip(self.params, self.fisher, self.anchor):
            loss = loss + (F * (p - p0) ** 2).sum()
        return 0.5 * self.lam * loss

    def memory_bytes(self) -> int:
        """Persistent bytes beside the model: the Fisher and the anchor."""
        return tensor_bytes(self.fisher) + tensor_bytes(self.anchor)


class AuthorsStep:
    """The released per-step damping of the SRFT authors, hooked on an optimizer like ``SRFTModel.attach``."""

    def __init__(self, params: Sequence[torch.Tensor], m_min: float = 0.25, m_max: float = 0.65) -> None:
        self.params = list(params)
        self.m_min, self.m_max = m_min, m_max
        self.prev_param = [torch.empty_like(p) for p in self.params]
        self.prev_sq: list[Any] = [None] * len(self.params)
        self._handles: list[Any] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        self._handles = [optimizer.register_step_pre_hook(lambda *_: self.before_step()),
                         optimizer.register_step_post_hook(lambda *_: self.after_step())]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def before_step(self) -> None:
        for p, prev in zip(self.params, self.prev_param):
            prev.copy_(p)

    @torch.no_grad()
    def after_step(self) -> None:
        for i, (p, prev) in enumerate(zip(self.params, self.prev_param)):
            if p.grad is None:
                continue
            g2 = p.grad ** 2
            v = g2 if self.prev_sq[i] is None else (g2 + self.prev_sq[i]) / 2
            self.prev_sq[i] = g2
            v = v / v.max()
            lin = torch.linspace(self.m_min, self.m_max, v.numel(), device=p.device, dtype=p.dtype)
            m = lin[torch.argsort(v.flatten())].view_as(p)
            p.sub_(m * (p - prev))

    def memory_bytes(self) -> int:
        """Persistent bytes beside the model: the pre-step snapshot and (from the first step on) the previous squared
        gradient, one tensor the size of each parameter."""
        return tensor_bytes(self.prev_param) + tensor_bytes(self.params)
