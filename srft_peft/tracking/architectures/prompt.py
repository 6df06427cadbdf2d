"""``mode="prompt"`` (a ViPT-like PEFT baseline): the frozen RGB tracker, X added to its tokens by small prompts.

Frozen ``backbone``/``box_head``; ``prompt.patch_embed`` embeds X (plus the frozen positional embeddings) into tokens
p; before each block i in ``prompt_layers``, ``t = t + prompt.blocks[str(i)](t, p)``. Only ``prompt.*`` trains.
Candidate elimination drops the same tokens from p as from the RGB tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
from timm.layers import PatchEmbed

from ..layers import TrackerConfig, apply_block, init_weights, norm_layer
from . import OSTrackRGBX, TrackerArchitecture, register_architecture

__all__ = ["PromptArchitecture", "PromptBlock", "PromptModule"]


class PromptBlock(nn.Module):
    """Low-rank prompt: ``up(GELU(down_rgb(LN(t)) + down_x(LN(p))))``, added to the RGB tokens ``t``.

    ``up`` starts at zero, so a freshly built prompt model computes exactly the RGB model's output.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm_rgb = norm_layer(dim)
        self.norm_x = norm_layer(dim)
        self.down_rgb = nn.Linear(dim, hidden)
        self.down_x = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        self.apply(init_weights)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor, x_tokens: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down_rgb(self.norm_rgb(tokens)) + self.down_x(self.norm_x(x_tokens))))


class PromptModule(nn.Module):
    """Trainable part of prompt mode: X patch embedding (``prompt.patch_embed``) + ``prompt.blocks.<layer>``."""

    def __init__(self, cfg: TrackerConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=cfg.patch_size, in_chans=3, embed_dim=cfg.embed_dim, strict_img_size=False
        )
        self.blocks = nn.ModuleDict({str(i): PromptBlock(cfg.embed_dim, cfg.prompt_dim) for i in cfg.prompt_layers})


@register_architecture("prompt")
class PromptArchitecture(TrackerArchitecture):
    """``prompt.patch_embed`` (a copy of the RGB patch embedding at conversion) and ``prompt.blocks.<layer>``."""

    role_prefixes = (("prompt.patch_embed.", "x_patch_embed"), ("prompt.blocks.", "fusion"),
                     *TrackerArchitecture.role_prefixes)
    trained_roles = ("x_patch_embed", "fusion")

    def build(self, model: OSTrackRGBX) -> None:
        model.prompt = PromptModule(model.config)

    @torch.no_grad()
    def init_from_rgb(self, model: OSTrackRGBX, rgb: Callable[[str], dict[str, torch.Tensor]],
                      fusion_init: str) -> None:
        model.prompt.patch_embed.load_state_dict(rgb("backbone.patch_embed."))

    def features(self, model: OSTrackRGBX, template: torch.Tensor, search: torch.Tensor,
                 kept: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        bb, prompt = model.backbone, model.prompt
        tokens = bb.embed(template[:, :3], search[:, :3])
        pe = prompt.patch_embed
        x_tokens = torch.cat([pe(template[:, 3:]) + bb.pos_embed_z, pe(search[:, 3:]) + bb.pos_embed_x], dim=1)
        for i, blk in enumerate(bb.blocks):
            key = str(i)
            if key in prompt.blocks:
                tokens = tokens + prompt.blocks[key](tokens, x_tokens)
            (tokens,), kept, (x_tokens,) = apply_block(model.config, i, [blk], [tokens], kept, [x_tokens],
                                                   model.ce_keep_ratio)
        return bb.norm(tokens), kept
