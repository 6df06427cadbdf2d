"""``mode="dual_stream"`` (the SRFT authors' design): an RGB stream and an X stream, joined by fusion blocks.

RGB stream ``backbone.*`` on ``[:, :3]``, X stream ``backbone_x.*`` (own patch embedding, positional embeddings,
blocks and norm) on ``[:, 3:]``. Wiring, for block i = 0..depth-1::

    t_rgb = backbone.blocks[i](t_rgb);  t_x = backbone_x.blocks[i](t_x)
    if i in fusion_layers:
        t_rgb, t_x = split(fusion[str(i)](cat([t_rgb, t_x], dim=1)))   # joint attention over both streams

output = (backbone.norm(t_rgb) + backbone_x.norm(t_x)) / 2 -> box_head. ``fusion.<i>`` starts as a copy of
pretrained block i (so fusion after block i initially re-applies block i), or, with ``fusion_init="identity"``, as
that copy with its two residual-branch output projections zeroed (the identity). ``box_head`` is frozen; everything
else trains. Candidate elimination ranks by the attention averaged over both streams and drops the same tokens from
both (the fusion blocks and the final average stay position-aligned).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from ..layers import ViTBackbone, apply_block, drop_path_rates, init_weights, make_block
from . import OSTrackRGBX, TrackerArchitecture, register_architecture

__all__ = ["DualStreamArchitecture"]

#: The residual-branch output projections of a fusion block, zeroed by ``fusion_init="identity"``.
FUSION_OUTPUTS = ("attn.proj", "mlp.fc2")


@register_architecture("dual_stream")
class DualStreamArchitecture(TrackerArchitecture):
    """Two full streams and ``fusion.<i>`` blocks after the blocks of ``config.fusion_layers``."""

    role_prefixes = (("backbone_x.patch_embed.", "x_patch_embed"), ("backbone_x.", "x_backbone"),
                     ("fusion.", "fusion"), *TrackerArchitecture.role_prefixes)
    trained_roles = ("patch_embed", "backbone", "x_patch_embed", "x_backbone", "fusion")
    has_x_stream = True

    def build(self, model: OSTrackRGBX) -> None:
        cfg = model.config
        model.backbone_x = ViTBackbone(cfg)
        rates = drop_path_rates(cfg)
        model.fusion = nn.ModuleDict({str(i): make_block(cfg, rates[i]) for i in cfg.fusion_layers})
        model.fusion.apply(init_weights)

    @torch.no_grad()
    def init_from_rgb(self, model: OSTrackRGBX, rgb: Callable[[str], dict[str, torch.Tensor]],
                      fusion_init: str) -> None:
        model.backbone_x.load_state_dict(rgb("backbone."))
        for i in model.config.fusion_layers:
            block = model.fusion[str(i)]
            block.load_state_dict(rgb(f"backbone.blocks.{i}."))
            if fusion_init == "identity":
                for out_proj in (block.attn.proj, block.mlp.fc2):  # both residual branches output zero
                    out_proj.weight.zero_()
                    out_proj.bias.zero_()

    def features(self, model: OSTrackRGBX, template: torch.Tensor, search: torch.Tensor,
                 kept: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        bb, bx = model.backbone, model.backbone_x
        tokens = bb.embed(template[:, :3], search[:, :3])
        t_x = bx.embed(template[:, 3:], search[:, 3:])
        for i, (blk_rgb, blk_x) in enumerate(zip(bb.blocks, bx.blocks)):
            (tokens, t_x), kept, _ = apply_block(model.config, i, [blk_rgb, blk_x], [tokens, t_x], kept, [],
                                                   model.ce_keep_ratio)
            key = str(i)
            if key in model.fusion:
                n = tokens.shape[1]
                joint = model.fusion[key](torch.cat([tokens, t_x], dim=1))
                tokens, t_x = joint[:, :n], joint[:, n:]
        return (bb.norm(tokens) + bx.norm(t_x)) / 2, kept

    def zero_initialized(self, model: OSTrackRGBX, fusion_init: str) -> list[str]:
        if fusion_init != "identity":
            return []
        prefixes = tuple(f"fusion.{i}.{name}." for i in model.config.fusion_layers for name in FUSION_OUTPUTS)
        return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]
