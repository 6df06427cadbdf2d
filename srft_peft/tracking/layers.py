"""The building blocks of the trackers: the timm-named ViT trunk, OSTrack's CENTER head and its decoding, and the
candidate-elimination (CE) steps that every architecture (:mod:`srft_peft.tracking.architectures`) runs its blocks
through.

Example:
    >>> import torch
    >>> from srft_peft.tracking import TrackerConfig
    >>> trunk = ViTBackbone(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    >>> trunk.embed(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 64, 64)).shape  # 4 template + 16 search tokens
    torch.Size([1, 20, 192])
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

#: A :class:`~srft_peft.tracking.TrackerConfig`, named here without importing it: the config's module imports this one
#: (and the architecture registry), so an import back would be a cycle.
TrackerConfig = Any

__all__ = ["MAP_EPS", "CenterHead", "ViTBackbone", "apply_block", "decode_center_maps", "drop_path_rates", "init_weights",
           "make_block", "norm_layer", "restore_search"]

norm_layer = partial(nn.LayerNorm, eps=1e-6)
#: The CENTER head clamps its score and size maps to [MAP_EPS, 1 - MAP_EPS] (OSTrack's value).
MAP_EPS = 1e-4


def init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def make_block(cfg: TrackerConfig, drop_path: float) -> Block:
    return Block(
        dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path=drop_path,
        norm_layer=norm_layer,
    )


def drop_path_rates(cfg: TrackerConfig) -> list[float]:
    n = cfg.depth
    return [float(cfg.drop_path) * i / max(n - 1, 1) for i in range(n)]


class ViTBackbone(nn.Module):
    """Timm-named ViT trunk: ``patch_embed.proj``, ``pos_embed_z``, ``pos_embed_x``, ``blocks.N.*``, ``norm``.

    :meth:`embed` returns the joint token sequence [z; x] (template tokens first) with positional embeddings added.
    """

    def __init__(self, cfg: TrackerConfig, in_chans: int = 3) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(
            img_size=None, patch_size=cfg.patch_size, in_chans=in_chans, embed_dim=d, strict_img_size=False
        )
        self.pos_embed_z = nn.Parameter(torch.zeros(1, cfg.template_feat_size**2, d))
        self.pos_embed_x = nn.Parameter(torch.zeros(1, cfg.search_feat_size**2, d))
        self.blocks = nn.Sequential(*[make_block(cfg, r) for r in drop_path_rates(cfg)])
        self.norm = norm_layer(d)
        nn.init.trunc_normal_(self.pos_embed_z, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_x, std=0.02)
        self.blocks.apply(init_weights)

    def embed(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = self.patch_embed(z) + self.pos_embed_z
        x = self.patch_embed(x) + self.pos_embed_x
        return torch.cat([z, x], dim=1)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.embed(z, x)))


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CenterHead(nn.Module):
    """OSTrack "CENTER" head: three branches of 4 conv-BN-ReLU (C -> c -> c/2 -> c/4 -> c/8) and a 1x1 conv.

    Returns ``(score_map (B,1,Fs,Fs), size_map (B,2,Fs,Fs), offset_map (B,2,Fs,Fs))``; the score and size maps are
    sigmoids clamped to [1e-4, 1 - 1e-4], as OSTrack's ``CenterPredictor`` clamps both (``lib/models/layers/head.py``,
    ``_sigmoid``). Channel 0 of size/offset is x (width), channel 1 is y (height).
    """

    branches = (("ctr", 1), ("size", 2), ("offset", 2))

    def __init__(self, in_dim: int, channels: int) -> None:
        super().__init__()
        widths = [in_dim, channels, channels // 2, channels // 4, channels // 8]
        for name, out_ch in self.branches:
            for i in range(4):
                self.add_module(f"conv{i + 1}_{name}", _conv_bn_relu(widths[i], widths[i + 1]))
            self.add_module(f"conv5_{name}", nn.Conv2d(widths[4], out_ch, 1))

    def _branch(self, name: str, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, 6):
            x = getattr(self, f"conv{i}_{name}")(x)
        return x

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        score = torch.sigmoid(self._branch("ctr", feat)).clamp(MAP_EPS, 1 - MAP_EPS)
        size = torch.sigmoid(self._branch("size", feat)).clamp(MAP_EPS, 1 - MAP_EPS)
        offset = self._branch("offset", feat)
        return score, size, offset


def decode_center_maps(score_map: torch.Tensor, size_map: torch.Tensor, offset_map: torch.Tensor) -> torch.Tensor:
    """Boxes (B, 4) normalized cx, cy, w, h from the argmax of ``score_map``.

    centre = (index + offset) / Fs, size = size_map at that index.

    Example:
        >>> s = torch.zeros(1, 1, 4, 4); s[0, 0, 1, 3] = 1
        >>> decode_center_maps(s, torch.full((1, 2, 4, 4), 0.25), torch.full((1, 2, 4, 4), 0.5)).tolist()
        [[0.875, 0.375, 0.25, 0.25]]
    """
    b, _, h, w = score_map.shape
    idx = score_map.flatten(1).argmax(dim=1)  # (B,)
    iy = torch.div(idx, w, rounding_mode="floor")
    ix = idx - iy * w
    gather_idx = idx.view(b, 1, 1).expand(b, 2, 1)
    size = size_map.flatten(2).gather(2, gather_idx).squeeze(2)
    offset = offset_map.flatten(2).gather(2, gather_idx).squeeze(2)
    cx = (ix.to(offset.dtype) + offset[:, 0]) / w
    cy = (iy.to(offset.dtype) + offset[:, 1]) / h
    return torch.stack([cx, cy, size[:, 0], size[:, 1]], dim=1)


def attention_residual(block: Block, x: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """First half of a timm ``Block``: ``x + attention branch``, and the attention that query tokens ``rows`` pay
    to every token, averaged over those rows and the heads (B, N).

    The block output uses the fused kernel; only the few query rows CE reads are recomputed explicitly.
    """
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise ValueError("candidate elimination does not support gated attention blocks")
    b, n, _ = x.shape
    h = block.norm1(x)
    q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(b, n, -1)
    if getattr(attn, "norm", None) is not None:  # timm >= 1.0 (identity unless the block uses it)
        out = attn.norm(out)
    out = attn.proj_drop(attn.proj(out))
    weights = torch.softmax((q[:, :, rows] * attn.scale) @ k.transpose(-2, -1), dim=-1)  # (B, H, rows, N)
    return x + block.drop_path1(block.ls1(out)), weights.mean(dim=(1, 2))


def mlp_residual(block: Block, x: torch.Tensor) -> torch.Tensor:
    """Second half of a timm ``Block``: ``x + MLP branch``."""
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


def eliminate(
    tensors: list[torch.Tensor], score: torch.Tensor, kept: torch.Tensor, n_z: int, ratio: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Keep the ``ceil(ratio * Ns)`` search tokens with the highest ``score`` (B, Ns) in every tensor of ``tensors``
    (B, Nz + Ns, D); ``kept`` (B, Ns) holds their original search indices and is gathered alike."""
    n_s = score.shape[1]
    n_keep = math.ceil(ratio * n_s)
    if n_keep >= n_s:
        return tensors, kept
    top = score.topk(n_keep, dim=1).indices  # most attended first, as OSTrack orders them
    out = []
    for t in tensors:
        idx = top.unsqueeze(-1).expand(-1, -1, t.shape[-1])
        out.append(torch.cat([t[:, :n_z], t[:, n_z:].gather(1, idx)], dim=1))
    return out, kept.gather(1, top)


def restore_search(tokens: torch.Tensor, kept: torch.Tensor | None, n_s: int) -> torch.Tensor:
    """Joint tokens (B, Nz + k, D) -> (B, Nz + Ns, D): kept search tokens back at their original indices,
    eliminated ones zero (after the final norm, as in OSTrack)."""
    if kept is None or kept.shape[1] == n_s:
        return tokens
    n_z = tokens.shape[1] - kept.shape[1]
    search = tokens.new_zeros(tokens.shape[0], n_s, tokens.shape[2])
    search = search.scatter(1, kept.unsqueeze(-1).expand(-1, -1, tokens.shape[2]), tokens[:, n_z:])
    return torch.cat([tokens[:, :n_z], search], dim=1)


def _ce_rows(cfg: TrackerConfig) -> slice:
    """Template token rows whose attention ranks the search tokens (see ``ce_template_range``)."""
    f = cfg.template_feat_size
    if cfg.ce_template_range == "all":
        return slice(0, f * f)
    centre = (f - 1) // 2 * (f + 1)  # row and column (f - 1) // 2
    return slice(centre, centre + 1)


def apply_block(
    cfg: TrackerConfig,
    i: int,
    blocks: list[Block],
    streams: list[torch.Tensor],
    kept: torch.Tensor | None,
    carried: list[torch.Tensor],
    keep_ratio: tuple[float, ...] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None, list[torch.Tensor]]:
    """Block ``i`` of every stream; at a CE block, the search tokens that the template centre attends to least
    (attention averaged over the streams) are dropped from every stream and from ``carried`` token tensors.

    ``kept`` (B, Ns') holds the original search indices of the tokens still there (None: CE off). ``keep_ratio``: one
    ratio per CE location (default ``cfg.ce_keep_ratio``; :attr:`OSTrackRGBX.ce_keep_ratio` during a keep-ratio
    warm-up)."""
    if kept is None or i not in cfg.ce_locations:
        return [blk(t) for blk, t in zip(blocks, streams)], kept, carried
    rows = _ce_rows(cfg)
    n_z = cfg.template_feat_size**2
    halves = [attention_residual(blk, t, rows) for blk, t in zip(blocks, streams)]
    score = torch.stack([w[:, n_z:] for _, w in halves]).mean(dim=0)
    ratio = (cfg.ce_keep_ratio if keep_ratio is None else keep_ratio)[cfg.ce_locations.index(i)]
    tensors, kept = eliminate([t for t, _ in halves] + carried, score, kept, n_z, ratio)
    n = len(streams)
    return [mlp_residual(blk, t) for blk, t in zip(blocks, tensors[:n])], kept, tensors[n:]
