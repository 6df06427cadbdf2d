"""``mode="rgb"``: the 3-channel OSTrack tracker (a 6-channel crop is accepted, its first 3 channels are read).

``backbone.*`` (timm ViT names, ``pos_embed_z``/``pos_embed_x``) on the joint tokens [z; x], then ``backbone.norm``
and ``box_head.*`` (CENTER head) on the search tokens. Everything trains.
"""

from __future__ import annotations

import torch

from ..layers import apply_block
from . import OSTrackRGBX, TrackerArchitecture, register_architecture

__all__ = ["RGBArchitecture"]


@register_architecture("rgb")
class RGBArchitecture(TrackerArchitecture):
    """The RGB tracker: no modules of its own."""

    input_channels = (3, 6)

    def features(self, model: OSTrackRGBX, template: torch.Tensor, search: torch.Tensor,
                 kept: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        bb = model.backbone
        tokens = bb.embed(template[:, :3], search[:, :3])
        for i, blk in enumerate(bb.blocks):
            (tokens,), kept, _ = apply_block(model.config, i, [blk], [tokens], kept, [], model.ce_keep_ratio)
        return bb.norm(tokens), kept
