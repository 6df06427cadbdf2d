"""The methods of a fine-tune: their SRFT presets (:func:`method_srft_config`), the trainable model of each
(:func:`build_finetune_model`), what the prior covers in a dual-stream tracker (:func:`prior_scope_fields`) and
L2-SP's uniform prior.

============================ ===================================================================================
``srft``                     dual-stream model, SRFT with the K-FAC prior (estimated on RGB pairs) and the transfer
                             term under the cosine schedule kappa(t) (the defaults of :class:`~srft_peft.SRFTConfig`).
``srft-prior-only``          ``srft`` with ``lambda_transfer=0`` (prior term only).
``srft-transfer-only``       ``srft`` with ``lambda_prior=0`` (transfer damping only; no prior is estimated).
``ewc``                      EWC: diagonal Fisher prior, constant kappa (``kappa_shape="constant"``), no transfer.
``l2sp``                     L2-SP: the ``ewc`` preset with every Fisher value replaced by 1, i.e. the uniform anchor
                             penalty ``lambda_prior/2 ||theta - theta0||^2`` (no calibration pass).
``full``                     dual-stream model, plain full fine-tuning.
``prompt``                   ViPT-like prompt model: frozen RGB tracker, trainable prompts.
``lora``                     dual-stream model with peft LoRA on every attention/MLP linear (``qkv``, ``proj``,
                             ``fc1``, ``fc2`` of both streams and the fusion blocks); everything else frozen.
============================ ===================================================================================
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from ...config import SRFTConfig
from ...model import SRFTModel
from ...significance.prior import DiagonalSignificance, PriorSignificance
from ..model import OSTrackRGBX

__all__ = ["LORA_TARGETS", "METHODS", "METHOD_ARCHITECTURES", "PRIOR_SCOPES", "SRFT_METHODS", "SRFT_PRESETS",
           "build_finetune_model", "method_srft_config", "prior_scope_fields", "tracker_of", "uniform_prior"]

METHODS = ("srft", "srft-prior-only", "srft-transfer-only", "ewc", "l2sp", "full", "prompt", "lora")
SRFT_METHODS = ("srft", "srft-prior-only", "srft-transfer-only", "ewc", "l2sp")
# SRFTConfig fields of each SRFT-family method (on top of the user's overrides, which win).
SRFT_PRESETS: dict[str, dict[str, Any]] = {
    "srft": {},
    "srft-prior-only": {"lambda_transfer": 0.0},
    "srft-transfer-only": {"lambda_prior": 0.0},
    "ewc": {"prior_estimator": "diagonal", "kappa_shape": "constant", "lambda_transfer": 0.0},
    "l2sp": {"prior_estimator": "diagonal", "kappa_shape": "constant", "lambda_transfer": 0.0},
}
#: The tracker architecture (``TrackerConfig.mode``) of the methods that do not fine-tune the dual-stream model.
METHOD_ARCHITECTURES = {"prompt": "prompt"}
LORA_TARGETS = r".*\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
#: What SRFT (and EWC / L2-SP) covers in a dual-stream tracker; see :func:`prior_scope_fields`.
PRIOR_SCOPES = ("all", "pretrained", "rgb-stream")


def prior_scope_fields(model: OSTrackRGBX, scope: str, fusion_init: str) -> dict[str, Any]:
    """The ``SRFTConfig`` targeting fields (parameter names of ``model``) that restrict the regularized parameters of a
    ``model`` with an X stream, read from its architecture's parameter roles
    (:meth:`~srft_peft.tracking.architectures.TrackerArchitecture.parameter_roles`).

    * ``"all"``: every trainable parameter outside the head (the SRFTConfig default; nothing added).
    * ``"pretrained"``: leave out the weights whose pretrained value has no RGB-tracking meaning for the fine-tune:
      the X patch embedding (role ``x_patch_embed``, ``backbone_x.patch_embed`` in a dual-stream tracker: it embeds
      X images, so a significance calibrated on RGB input says nothing about it) and the parameters the architecture
      zeroes under ``fusion_init`` (dual-stream, ``fusion_init="identity"``: the fusion blocks' ``attn.proj`` /
      ``mlp.fc2``, which start as "no fusion", not as an RGB function).
    * ``"rgb-stream"``: only the RGB stream (roles ``patch_embed`` and ``backbone``, ``backbone.*``); the X stream and
      the fusion blocks train freely.

    Architectures without an X stream (``rgb``, ``prompt``) have nothing to tell apart: only ``"all"`` applies.

    Example:
        >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig
        >>> m = OSTrackRGBX(TrackerConfig(variant="tiny", mode="dual_stream", fusion_layers=(1,)))
        >>> prior_scope_fields(m, "pretrained", "identity")["exclude_modules"]  # doctest: +NORMALIZE_WHITESPACE
        ['backbone_x.patch_embed.proj.weight', 'backbone_x.patch_embed.proj.bias', 'fusion.1.attn.proj.weight',
         'fusion.1.attn.proj.bias', 'fusion.1.mlp.fc2.weight', 'fusion.1.mlp.fc2.bias']
    """
    if scope not in PRIOR_SCOPES:
        raise ValueError(f"prior_scope must be one of {list(PRIOR_SCOPES)}, got {scope!r}")
    if scope == "all":
        return {}
    arch = model.architecture
    if not arch.has_x_stream:
        raise ValueError(f"prior_scope={scope!r} needs a dual-stream tracker, got mode={model.config.mode!r}")
    if scope == "rgb-stream":
        return {"target_modules": arch.names_with_roles(model, ("patch_embed", "backbone"))}
    out = set(arch.names_with_roles(model, ("x_patch_embed",))) | set(arch.zero_initialized(model, fusion_init))
    return {"exclude_modules": [n for n, _ in model.named_parameters() if n in out]}


def method_srft_config(method: str, total_steps: int, overrides: dict[str, Any] | None = None) -> SRFTConfig | None:
    """The :class:`SRFTConfig` of ``method`` (its :data:`SRFT_PRESETS` entry, then ``overrides``), or None for the
    methods without SRFT (``full``, ``prompt``, ``lora``).

    Example:
        >>> cfg = method_srft_config("ewc", 100)
        >>> cfg.prior_estimator, cfg.kappa_shape, cfg.lambda_transfer
        ('diagonal', 'constant', 0.0)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method not in SRFT_METHODS:
        if overrides:
            raise ValueError(f"srft overrides {sorted(overrides)} given for method {method!r}, which does not use SRFT")
        return None
    return SRFTConfig(**{**SRFT_PRESETS[method], "total_steps": total_steps, **(overrides or {})})


def uniform_prior(srft: SRFTModel) -> PriorSignificance:
    """L2-SP's prior: a diagonal "Fisher" of ones for every regularized parameter (R = 1/2 ||theta - theta0||^2)."""
    entries = {t.name: DiagonalSignificance(t.name, torch.ones_like(t.param, dtype=torch.float32), source="uniform")
               for t in srft.regularized_targets}
    return PriorSignificance(entries, normalizer=1.0, objective="uniform (L2-SP)", normalized=True)


def build_finetune_model(
    method: str, rgb_model: OSTrackRGBX, lora_r: int = 8, lora_alpha: float = 16.0, fusion_init: str = "identity",
    drop_path: float = 0.0,
) -> nn.Module:
    """The trainable model of ``method`` built from an RGB tracker (a new model; ``rgb_model`` is not changed).

    The architecture is :data:`METHOD_ARCHITECTURES` of the method (``dual_stream`` unless listed); what trains is
    what that architecture trains (its ``trained_roles``). ``prompt``: ``OSTrackRGBX.from_rgb(rgb, "prompt")``;
    ``lora``: peft ``get_peft_model`` on the dual-stream model with :data:`LORA_TARGETS`; every other method:
    ``OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init)`` (SRFT is wrapped around it by :func:`finetune_rgbx`).
    ``drop_path``: the stochastic-depth rate of the new model's ViT blocks (``TrackerConfig.drop_path``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    model = OSTrackRGBX.from_rgb(rgb_model, METHOD_ARCHITECTURES.get(method, "dual_stream"), fusion_init=fusion_init,
                                 drop_path=drop_path)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        return get_peft_model(model, config)
    return model


def tracker_of(model: nn.Module) -> OSTrackRGBX:
    """The OSTrackRGBX inside an SRFT / peft wrapper (LoRA merged into a copy)."""
    if isinstance(model, SRFTModel):
        return model.get_base_model()
    if isinstance(model, OSTrackRGBX):
        return model
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    raise TypeError(f"unexpected model type {type(model).__name__}")

