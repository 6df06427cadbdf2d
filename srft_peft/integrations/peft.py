"""SRFT on top of a peft model: regularize the adapters' trainable parameters.

``srft_peft.get_srft_model(peft_model, config)`` selects the trainable parameters as usual (``target_modules=None``:
every adapter outside the head; a list/regex may also name the LoRA layers, e.g. ``["query", "value"]``). For each
plain LoRA adapter on a Linear-like layer (``W x + s B A x``):

* the prior is measured on the **base** weight W: K-FAC factors from the LoRA layer's input and output gradient
  (those of the base layer; with B = 0 at initialisation the model is the pretrained one);
* the penalty acts on the adapter's effective update dW = s B A in the tangent space of W, without forming dW:
  U^T (s B A) V = s (U^T B)(A V), R = 1/2 ||sqrt(omega) * (s (U^T B)(A V) - P0)||^2, with fused gradients for A and B
  (`srft_peft.regularizer.lora_term`);
* the transfer term damps A and B element by element like any other parameter.

Other trainable parameters (``modules_to_save`` copies, biases with ``bias="all"``, DoRA magnitudes, Conv/Embedding
LoRA factors) are regularized as ordinary parameters toward their values at attach time;
:func:`srft_peft.get_srft_model` warns about LoRA factors that take that path. :func:`lora_adapters` lists the adapters
regularized in the base weight's tangent space.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import SRFTModel
from ..regularizer.lora_term import lora_adapter_name, lora_pairs

__all__ = ["LoRAAdapter", "lora_adapters"]


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
    targets = srft.regularized_targets
    out = []
    for p in lora_pairs(targets):
        a, b = targets[p.a], targets[p.b]
        out.append(LoRAAdapter(a.module_name, lora_adapter_name(a), p.scale, p.prior_name, a.name, b.name))
    return out
