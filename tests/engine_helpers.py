"""Reaching SRFT's state in tests through public API only: the regularized parameters, the state tensors, and an
explicitly built `SRFTEngine` that mirrors an `SRFTModel` (its prior, anchors, statistics and step)."""

from __future__ import annotations

import torch

from srft_peft import SRFTModel
from srft_peft.regularizer.engine import SRFTEngine
from srft_peft.schedule import coefficients


def regularized_params(srft: SRFTModel) -> list[torch.nn.Parameter]:
    """The regularized parameters, in SRFT's order."""
    return [t.param for t in srft.regularized_targets]


def state_tensor(srft: SRFTModel, key: str) -> torch.Tensor:
    """One tensor of ``srft.srft_state_dict()`` (a copy: same values, dtype and device as SRFT's own)."""
    return srft.srft_state_dict()["tensors"][key]


def engine_copy(srft: SRFTModel) -> SRFTEngine:
    """An `SRFTEngine` built explicitly over ``srft``'s parameters, with its prior, anchors, statistics and step."""
    engine = SRFTEngine(srft.srft_config, srft.regularized_targets)
    if srft.prior is not None:
        engine.set_prior(srft.prior)
    engine.load_state_dict(srft.srft_state_dict())
    return engine


def prior_lambda(srft: SRFTModel) -> float:
    """lambda_p(t) at ``srft``'s current step and T."""
    state = srft.srft_state_dict()
    return coefficients(srft.srft_config, state["step"], state["total_steps"])[0]
