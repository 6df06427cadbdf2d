"""SRFT on top of a peft model: regularize the adapters' trainable parameters.

``get_srft_model(peft_model, config)`` (this module's or the package's, they are the same path) selects the trainable
parameters as usual (``target_modules=None``: every adapter outside the head; a list/regex may also name the LoRA
layers, e.g. ``["query", "value"]``). For each plain LoRA adapter on a Linear-like layer (``W x + s B A x``):

* the prior is measured on the **base** weight W: K-FAC factors from the LoRA layer's input and output gradient
  (those of the base layer; with B = 0 at initialisation the model is the pretrained one);
* the penalty acts on the adapter's effective update dW = s B A in the tangent space of W, without forming dW:
  U^T (s B A) V = s (U^T B)(A V), R = 1/2 ||sqrt(omega) * (s (U^T B)(A V) - P0)||^2, with fused gradients for A and B
  (`srft_peft.regularizer.lora_term`);
* the transfer term damps A and B element by element like any other parameter.

Other trainable parameters (``modules_to_save`` copies, biases with ``bias="all"``, DoRA magnitudes, Conv/Embedding
LoRA factors) are regularized as ordinary parameters toward their values at attach time; :func:`get_srft_model` warns
about LoRA factors that take that path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

from torch import nn

from ..config import SRFTConfig
from ..model import SRFTModel
from ..model import get_srft_model as _get_srft_model
from ..regularizer.lora_term import lora_adapter_name, lora_pairs
from ..targeting import LORA_KINDS

__all__ = ["LoRAAdapter", "get_srft_model", "lora_adapters"]


@dataclass
class LoRAAdapter:
    """One LoRA adapter regularized in the tangent space of its base weight."""

    layer: str
    adapter: str
    scale: float
    base_weight: str
    lora_A: str
    lora_B: str


def lora_adapters(srft: SRFTModel) -> list[LoRAAdapter]:
    """The adapters whose update s B A SRFT regularizes in the base weight's tangent space."""
    targets = srft._engine.targets
    out = []
    for p in lora_pairs(targets):
        a, b = targets[p.a], targets[p.b]
        out.append(LoRAAdapter(a.module_name, lora_adapter_name(a), p.scale, p.prior_name, a.name, b.name))
    return out


def get_srft_model(model: nn.Module, config: Optional[SRFTConfig] = None) -> SRFTModel:
    """`srft_peft.get_srft_model` for a peft model, with a check that its adapters are covered.

    Warns when trainable LoRA factors are regularized as ordinary parameters (a DoRA or other LoRA variant, a LoRA
    bias, Conv/Embedding LoRA, or ``prior_estimator="diagonal"``) instead of through the base weight's prior.
    """
    srft = _get_srft_model(model, config)
    plain = [t.name for t in srft._engine.targets if t.kind not in LORA_KINDS and ".lora_" in t.name]
    if plain:
        warnings.warn(f"SRFT: {len(plain)} LoRA parameters (e.g. {plain[0]!r}) are regularized as ordinary parameters "
                      "toward their initial values, not through the base weight's prior (LoRA variant, LoRA bias, "
                      "Conv/Embedding LoRA, or prior_estimator='diagonal')", stacklevel=2)
    return srft
