"""One-stream ViT tracker (OSTrack layout) with RGB, dual-stream (SRFT) and prompt (ViPT-like) RGB-X modes.

Example:
    >>> import torch
    >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig
    >>> rgb = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    >>> model = OSTrackRGBX.from_rgb(rgb, mode="dual_stream")
    >>> out = model(torch.randn(2, 6, 32, 32), torch.randn(2, 6, 64, 64), search_box=torch.rand(2, 4) * 0.5)
    >>> out.pred_boxes.shape, out.loss.ndim
    (torch.Size([2, 4]), 0)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from transformers.utils import ModelOutput

from .architectures import TrackerArchitecture, get_architecture
from .architectures.dual_stream import DualStreamArchitecture  # importing the built-in ones registers them
from .architectures.prompt import PromptArchitecture, PromptBlock, PromptModule
from .architectures.rgb import RGBArchitecture
from .layers import CenterHead, ViTBackbone, decode_center_maps, restore_search
from .losses import tracking_loss

__all__ = [
    "CenterHead",
    "DualStreamArchitecture",
    "OSTrackRGBX",
    "ParameterCount",
    "PromptArchitecture",
    "PromptBlock",
    "PromptModule",
    "RGBArchitecture",
    "TrackerConfig",
    "TrackerOutput",
    "ViTBackbone",
    "build_rgbx_from_rgb",
    "decode_center_maps",
]

VARIANTS: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 192, "depth": 4, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
}
_DEFAULT_HEAD_CHANNELS = {"tiny": 64, "small": 256, "base": 256}
CE_TEMPLATE_RANGES = ("ctr_point", "all")
FUSION_INITS = ("copy", "identity")
# Fields that define tensor shapes: they cannot change when converting an RGB model with `from_rgb`.
_ARCH_FIELDS = ("variant", "template_size", "search_size", "patch_size", "head_channels")


def _default_fusion_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    """Evenly spaced block indices ending at the last block (depth 12 -> (2, 5, 8, 11))."""
    count = min(count, depth)
    return tuple(round((k + 1) * depth / count) - 1 for k in range(count))


@dataclass
class TrackerConfig:
    """Configuration of :class:`OSTrackRGBX`.

    Example:
        >>> cfg = TrackerConfig.from_preset("ostrack256", mode="dual_stream")
        >>> cfg.fusion_layers, cfg.search_feat_size
        ((2, 5, 8, 11), 16)
    """

    variant: str = field(
        default="base",
        metadata={
            "help": "ViT size: 'tiny' (192-d, 4 blocks, 3 heads; CPU tests), 'small' (ViT-S/16), 'base' (ViT-B/16)."
        },
    )
    mode: str = field(
        default="rgb",
        metadata={
            "help": "The tracker architecture (a key of the architecture registry, srft_peft.tracking.architectures): "
            "'rgb' (3-channel OSTrack), 'dual_stream' (SRFT authors' two-stream RGB-X model) or 'prompt' (ViPT-like "
            "frozen backbone + trainable prompts)."
        },
    )
    template_size: int = field(default=128, metadata={"help": "Side of the square template crop, in pixels."})
    search_size: int = field(default=256, metadata={"help": "Side of the square search crop, in pixels."})
    patch_size: int = field(default=16, metadata={"help": "Patch size (= stride) of the patch embedding."})
    fusion_layers: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "help": "dual_stream only: indices of pretrained blocks copied as fusion blocks, each applied to the "
            "concatenated tokens of both streams right after that block. None = 4 evenly spaced (depth 12: 2,5,8,11)."
        },
    )
    head_channels: int | None = field(
        default=None,
        metadata={
            "help": "Width of the CENTER head's first conv (then /2, /4, /8). None = 256 (base/small), 64 (tiny)."
        },
    )
    prompt_dim: int = field(default=8, metadata={"help": "prompt only: bottleneck width of each prompt block."})
    prompt_layers: tuple[int, ...] | None = field(
        default=None, metadata={"help": "prompt only: blocks preceded by a prompt block. None = all blocks."}
    )
    ce_locations: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "Candidate elimination (OSTrack's CE models): blocks after whose attention the least attended search "
            "tokens are dropped from all later blocks. () = off (non-CE models). OSTrack *_ce_* configs: (3, 6, 9)."
        },
    )
    ce_keep_ratio: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "One ratio in (0, 1] per ce_locations entry: that block keeps ceil(ratio * remaining) search tokens "
            "(OSTrack: 0.7 each)."
        },
    )
    ce_template_range: str = field(
        default="ctr_point",
        metadata={
            "help": "Template tokens whose attention ranks the search tokens: 'ctr_point' (the centre token, row and "
            "column (Ft-1)//2, OSTrack's CTR_POINT) or 'all' (every template token)."
        },
    )
    drop_path: float = field(default=0.0, metadata={"help": "Stochastic depth rate, linearly increasing with depth."})
    focal_weight: float = field(default=1.0, metadata={"help": "Weight of the focal (heatmap) loss."})
    giou_weight: float = field(default=2.0, metadata={"help": "Weight of the GIoU loss."})
    l1_weight: float = field(default=5.0, metadata={"help": "Weight of the L1 loss on normalized x1y1x2y2 boxes."})

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        get_architecture(self.mode)  # an unknown mode lists the registered ones
        if not isinstance(self.patch_size, int) or self.patch_size <= 0:
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
        for name in ("template_size", "search_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0 or value % self.patch_size:
                raise ValueError(f"{name} must be a positive multiple of patch_size={self.patch_size}, got {value!r}")
        depth = self.depth
        if self.fusion_layers is None:
            self.fusion_layers = _default_fusion_layers(depth)
        self.fusion_layers = self._check_layers("fusion_layers", self.fusion_layers, depth)
        if self.prompt_layers is None:
            self.prompt_layers = tuple(range(depth))
        self.prompt_layers = self._check_layers("prompt_layers", self.prompt_layers, depth)
        self._check_ce(depth)
        if self.head_channels is None:
            self.head_channels = _DEFAULT_HEAD_CHANNELS[self.variant]
        if not isinstance(self.head_channels, int) or self.head_channels < 8 or self.head_channels % 8:
            raise ValueError(f"head_channels must be a positive multiple of 8, got {self.head_channels!r}")
        if not isinstance(self.prompt_dim, int) or self.prompt_dim <= 0:
            raise ValueError(f"prompt_dim must be a positive int, got {self.prompt_dim!r}")
        if not 0.0 <= float(self.drop_path) < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {self.drop_path!r}")
        for name in ("focal_weight", "giou_weight", "l1_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def _check_ce(self, depth: int) -> None:
        self.ce_locations = self._check_layers("ce_locations", self.ce_locations, depth)
        try:
            ratios = tuple(self.ce_keep_ratio)
        except TypeError as err:
            raise ValueError(f"ce_keep_ratio must be a sequence of numbers, got {self.ce_keep_ratio!r}") from err
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1 for r in ratios):
            raise ValueError(f"ce_keep_ratio entries must be numbers in (0, 1], got {self.ce_keep_ratio!r}")
        if len(ratios) != len(self.ce_locations):
            raise ValueError(
                f"ce_keep_ratio needs one entry per ce_locations entry {list(self.ce_locations)}, "
                f"got {self.ce_keep_ratio!r}"
            )
        self.ce_keep_ratio = tuple(float(r) for r in ratios)
        if self.ce_template_range not in CE_TEMPLATE_RANGES:
            raise ValueError(
                f"ce_template_range must be one of {list(CE_TEMPLATE_RANGES)}, got {self.ce_template_range!r}"
            )

    @staticmethod
    def _check_layers(name: str, layers: Any, depth: int) -> tuple[int, ...]:
        try:
            out = tuple(int(i) for i in layers)
        except TypeError as err:
            raise ValueError(f"{name} must be a sequence of block indices, got {layers!r}") from err
        if any(i < 0 or i >= depth for i in out) or len(set(out)) != len(out) or list(out) != sorted(out):
            raise ValueError(f"{name} must be strictly increasing block indices in [0, {depth}), got {layers!r}")
        return out

    # --- derived sizes -------------------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return VARIANTS[self.variant]["embed_dim"]

    @property
    def depth(self) -> int:
        return VARIANTS[self.variant]["depth"]

    @property
    def num_heads(self) -> int:
        return VARIANTS[self.variant]["num_heads"]

    @property
    def template_feat_size(self) -> int:
        return self.template_size // self.patch_size

    @property
    def search_feat_size(self) -> int:
        """Side Fs of the score/size/offset maps."""
        return self.search_size // self.patch_size

    @property
    def input_channels(self) -> tuple[int, ...]:
        """The channel counts of the crops the architecture accepts: (3, 6) for 'rgb' (first 3 used), (6,) for RGB-X."""
        return get_architecture(self.mode).input_channels

    @property
    def in_chans(self) -> int:
        """Channels the model is built for: 3 for 'rgb' (6 accepted, first 3 used), 6 (RGB + X) for RGB-X."""
        return self.input_channels[0]

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"focal": float(self.focal_weight), "giou": float(self.giou_weight), "l1": float(self.l1_weight)}

    # --- presets / serialisation ---------------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrackerConfig:
        """``"ostrack256"`` (template 128 / search 256) or ``"ostrack384"`` (192 / 384), ViT-B unless overridden.

        The ``*_ce`` presets add OSTrack's candidate elimination (blocks 3, 6, 9 keep 70 %), as in the official
        ``vitb_256_mae_ce_32x4_ep300`` / ``vitb_384_mae_ce_32x4_ep300`` checkpoints.
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fusion_layers"] = list(self.fusion_layers or ())
        data["prompt_layers"] = list(self.prompt_layers or ())
        data["ce_locations"] = list(self.ce_locations)
        data["ce_keep_ratio"] = list(self.ce_keep_ratio)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrackerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrackerConfig fields: {unknown}")
        return cls(**dict(data))

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> TrackerConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


PRESETS: dict[str, dict[str, Any]] = {
    "ostrack256": {"variant": "base", "template_size": 128, "search_size": 256},
    "ostrack384": {"variant": "base", "template_size": 192, "search_size": 384},
}
_OSTRACK_CE = {"ce_locations": (3, 6, 9), "ce_keep_ratio": (0.7, 0.7, 0.7), "ce_template_range": "ctr_point"}
PRESETS.update({f"{name}_ce": {**PRESETS[name], **_OSTRACK_CE} for name in ("ostrack256", "ostrack384")})


@dataclass
class TrackerOutput(ModelOutput):
    """Output of :class:`OSTrackRGBX`; attribute and key access (``out.loss`` / ``out["loss"]``).

    ``loss`` is first, so Hugging-Face-style code (``outputs.loss``, ``outputs[0]`` when a loss exists) works.
    Maps are (B, 1|2, Fs, Fs); ``pred_boxes`` is (B, 4) normalized cx, cy, w, h in search-crop coordinates.
    """

    loss: torch.Tensor | None = None
    score_map: torch.Tensor | None = None
    size_map: torch.Tensor | None = None
    offset_map: torch.Tensor | None = None
    pred_boxes: torch.Tensor | None = None
    loss_components: dict[str, torch.Tensor] | None = None


class ParameterCount(NamedTuple):
    total: int
    trainable: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || "
            f"trainable%: {self.trainable_percent:.4f}"
        )


class OSTrackRGBX(nn.Module):
    """OSTrack-style one-stream tracker with RGB, dual-stream and prompt modes.

    Inputs are ImageNet-normalized crops: ``template`` (B, C, template_size, template_size), ``search``
    (B, C, search_size, search_size) with C = 3 (rgb; 6 accepted, first 3 used) or 6 (RGB then X).

    Modes (the registered architectures of :mod:`srft_peft.tracking.architectures`; each module documents its
    parameter names and wiring):

    * ``rgb``: ``backbone.*`` (timm ViT names, ``pos_embed_z``/``pos_embed_x``) on tokens [z; x], then
      ``backbone.norm`` and ``box_head.*`` (CENTER head) on the search tokens.
    * ``dual_stream`` (SRFT authors' design): RGB stream ``backbone.*`` on ``[:, :3]``, X stream ``backbone_x.*`` on
      ``[:, 3:]``, fusion blocks ``fusion.<i>`` on the concatenated tokens after block i of ``fusion_layers``,
      output (norm_rgb + norm_x) / 2; ``box_head`` frozen.
    * ``prompt`` (ViPT-like PEFT baseline): frozen ``backbone``/``box_head``; ``prompt.*`` (an X patch embedding and
      prompt blocks added to the RGB tokens) trains.

    Candidate elimination (``config.ce_locations``, OSTrack's CE models): inside each listed block, between its
    attention and its MLP, only the ``ceil(ratio * remaining)`` search tokens that the template centre token attends to
    most (mean over heads) stay for the later blocks; before the head the dropped ones are zeros at their original
    positions. ``dual_stream`` ranks by the attention averaged over both streams and drops the same tokens from both
    (the fusion blocks and the final average stay position-aligned); ``prompt`` drops them from the X tokens too.

    Modules whose parameters are all frozen (``box_head``, ``backbone``) are kept in eval mode by :meth:`train`, so
    a frozen head's BatchNorm statistics do not drift.
    """

    def __init__(self, config: TrackerConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ViTBackbone(config)
        self.box_head = CenterHead(config.embed_dim, config.head_channels)
        arch = self.architecture
        arch.build(self)
        roles = arch.parameter_roles(self)
        for name, p in self.named_parameters():
            p.requires_grad_(roles[name] in arch.trained_roles)

    @property
    def ce_keep_ratio(self) -> tuple[float, ...]:
        """The keep ratios candidate elimination uses now: in training mode those of :meth:`set_ce_keep_ratio` (a
        keep-ratio warm-up) when set, else ``config.ce_keep_ratio`` (always in eval mode, as OSTrack at inference)."""
        override = getattr(self, "_ce_train_keep_ratio", None)
        return override if self.training and override is not None else self.config.ce_keep_ratio

    def set_ce_keep_ratio(self, ratios: tuple[float, ...] | None) -> None:
        """Keep ratios (one per ``config.ce_locations`` entry, each in (0, 1]) for training-mode forwards, e.g. 1.0 early
        in training (OSTrack-CE's warm-up keeps every token, then anneals to the configured ratio); None = the config's.

        Example:
            >>> m = OSTrackRGBX(TrackerConfig(variant="tiny", ce_locations=(1,), ce_keep_ratio=(0.7,)))
            >>> m.set_ce_keep_ratio((1.0,)); m.train().ce_keep_ratio, m.eval().ce_keep_ratio
            ((1.0,), (0.7,))
        """
        if ratios is not None:
            ratios = tuple(float(r) for r in ratios)
            if len(ratios) != len(self.config.ce_locations) or not all(0.0 < r <= 1.0 for r in ratios):
                raise ValueError(f"set_ce_keep_ratio needs one ratio in (0, 1] per ce_locations entry "
                                 f"{list(self.config.ce_locations)}, got {ratios!r}")
        self._ce_train_keep_ratio = ratios

    @property
    def architecture(self) -> TrackerArchitecture:
        """The registered architecture of ``config.mode`` (parameter roles, input channels, wiring)."""
        return get_architecture(self.config.mode)

    # --- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_rgb(cls, rgb_model: OSTrackRGBX, mode: str, fusion_init: str = "copy", **overrides: Any) -> OSTrackRGBX:
        """Build a ``dual_stream``/``prompt`` (or ``rgb``) model from a trained ``mode="rgb"`` model.

        Both streams copy ``rgb_model.backbone``, ``fusion.<i>`` copies ``backbone.blocks.<i>``, the head and the X
        patch embedding copy the RGB ones. ``overrides`` may change non-shape fields (fusion_layers,
        prompt_dim, prompt_layers, drop_path, loss weights). ``fusion_init``: how the fusion blocks start (see
        :meth:`init_from_rgb`).

        Example:
            >>> rgb = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
            >>> OSTrackRGBX.from_rgb(rgb, "prompt").count_parameters().trainable > 0
            True
        """
        if not isinstance(rgb_model, OSTrackRGBX) or rgb_model.config.mode != "rgb":
            raise ValueError("rgb_model must be an OSTrackRGBX with mode='rgb'")
        bad = sorted(set(overrides) & set(_ARCH_FIELDS))
        if bad:
            raise ValueError(f"from_rgb cannot change shape-defining fields {bad}; build a new RGB model instead")
        cfg = dataclasses.replace(rgb_model.config, mode=mode, **overrides)
        ref = next(rgb_model.parameters())
        model = cls(cfg).to(device=ref.device, dtype=ref.dtype)
        model.init_from_rgb(rgb_model, fusion_init)
        model.train(rgb_model.training)
        return model

    @torch.no_grad()
    def init_from_rgb(self, rgb: OSTrackRGBX | Mapping[str, torch.Tensor], fusion_init: str = "copy") -> None:
        """Copy RGB weights (a ``mode="rgb"`` model or its state dict) into every part of this model.

        ``fusion_init`` (dual_stream): ``"copy"`` (the SRFT authors': ``fusion.<i>`` = pretrained block i) or
        ``"identity"`` (that copy with ``attn.proj`` and ``mlp.fc2`` zeroed, so each fusion block starts as the
        identity and the model fed ``[rgb, rgb]`` reproduces the RGB tracker exactly).
        """
        if fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {list(FUSION_INITS)}, got {fusion_init!r}")
        sd = rgb.state_dict() if isinstance(rgb, nn.Module) else dict(rgb)

        def sub(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

        self.backbone.load_state_dict(sub("backbone."))
        self.box_head.load_state_dict(sub("box_head."))
        self.architecture.init_from_rgb(self, sub, fusion_init)

    # --- helpers ----------------------------------------------------------------------------------------------------
    def count_parameters(self) -> ParameterCount:
        """Total and trainable parameter counts (``print(model.count_parameters())`` prints peft-style)."""
        total = trainable = 0
        for p in self.parameters():
            total += p.numel()
            if p.requires_grad:
                trainable += p.numel()
        return ParameterCount(total, trainable)

    def print_trainable_parameters(self) -> None:
        print(self.count_parameters())

    def train(self, mode: bool = True) -> OSTrackRGBX:
        super().train(mode)
        if mode:
            for module in (self.backbone, self.box_head):
                if not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    def _check_inputs(self, template: torch.Tensor, search: torch.Tensor) -> None:
        cfg = self.config
        allowed = self.architecture.input_channels
        for name, t, side in (("template", template, cfg.template_size), ("search", search, cfg.search_size)):
            if t.ndim != 4 or t.shape[1] not in allowed or t.shape[2] != side or t.shape[3] != side:
                raise ValueError(
                    f"{name} must have shape (B, {'|'.join(map(str, allowed))}, {side}, {side}) for mode "
                    f"{cfg.mode!r}, got {tuple(t.shape)}"
                )
        if template.shape[0] != search.shape[0]:
            raise ValueError(f"template and search batch sizes differ: {template.shape[0]} vs {search.shape[0]}")

    def forward_features(self, template: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
        """Normalized joint tokens (B, Nz + Nx, D); template tokens first.

        With candidate elimination (``config.ce_locations``) the eliminated search tokens are zero.
        """
        self._check_inputs(template, search)
        n_s = self.config.search_feat_size**2
        kept = None
        if self.config.ce_locations:
            kept = torch.arange(n_s, device=search.device).expand(search.shape[0], n_s)
        tokens, kept = self.architecture.features(self, template, search, kept)
        return restore_search(tokens, kept, n_s)

    def forward(
        self,
        template: torch.Tensor,
        search: torch.Tensor,
        search_box: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> TrackerOutput:
        """Predict maps and boxes; given ``search_box`` (B, 4) normalized x, y, w, h (top-left, search crop), the loss.

        ``visible`` (B,) bool optionally marks samples whose target is present (absent ones: heatmap all zero, no box
        loss).
        """
        tokens = self.forward_features(template, search)
        fs = self.config.search_feat_size
        search_tokens = tokens[:, -fs * fs :]
        feat = search_tokens.transpose(1, 2).reshape(search_tokens.shape[0], -1, fs, fs)
        score, size, offset = self.box_head(feat)
        pred_boxes = decode_center_maps(score, size, offset)
        loss = components = None
        if search_box is not None:
            loss, components = tracking_loss(
                {"score_map": score, "pred_boxes": pred_boxes},
                search_box,
                weights=self.config.loss_weights,
                visible=visible,
            )
        # built in one go so that, as in transformers, ``loss`` is the first key when present
        return TrackerOutput(
            loss=loss,
            score_map=score,
            size_map=size,
            offset_map=offset,
            pred_boxes=pred_boxes,
            loss_components=components,
        )


def build_rgbx_from_rgb(rgb_model: OSTrackRGBX, mode: str = "dual_stream", **overrides: Any) -> OSTrackRGBX:
    """Function form of :meth:`OSTrackRGBX.from_rgb`."""
    return OSTrackRGBX.from_rgb(rgb_model, mode, **overrides)
