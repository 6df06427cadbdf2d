"""Load RGB OSTrack/DropTrack checkpoints (weights-only, trainer files included) and save/load our trackers as safetensors.

Example:
    >>> import tempfile
    >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig, save_tracker, load_tracker
    >>> model = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = save_tracker(model, d)
    ...     load_tracker(d).config.variant
    'tiny'
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .architectures import RGB_ROLES
from .model import OSTrackRGBX, TrackerConfig

__all__ = [
    "CheckpointFormatError",
    "InertObject",
    "LoadReport",
    "PartialLoadError",
    "load_rgb_checkpoint",
    "load_trainer_checkpoint",
    "load_tracker",
    "read_weights_only",
    "save_tracker",
]

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "srft_peft.OSTrackRGBX"
FORMAT_VERSION = 1
# Keys of OSTrack/timm checkpoints that the tracker does not use (cls token, the ImageNet-grid positional embedding).
_IGNORABLE = ("backbone.cls_token", "backbone.cls_pos_embed", "backbone.dist_token", "backbone.pos_embed")
# ... and image-classifier parts that timm-derived backbones may carry.
_IGNORABLE_PREFIXES = ("backbone.head.", "backbone.head_dist.", "backbone.pre_logits.", "backbone.fc_norm.")


class CheckpointFormatError(ValueError):
    """A checkpoint file could not be read as a weights-only tensor dictionary."""


class PartialLoadError(ValueError):
    """A strict :func:`load_rgb_checkpoint` found missing, unexpected or mismatched keys; the model was not changed."""


@dataclass
class LoadReport:
    """What :func:`load_rgb_checkpoint` did. Keys use the RGB model's names (``backbone.*``, ``box_head.*``)."""

    path: str = ""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    interpolated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded and nothing unexpected was found."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 5) -> str:
        """``path: N missing (first keys, ...), M unexpected (...), K mismatched (...)`` with at most ``limit`` keys each."""
        parts = []
        for kind in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, kind)
            if keys:
                more = ", ..." if len(keys) > limit else ""
                parts.append(f"{len(keys)} {kind} ({', '.join(keys[:limit])}{more})")
        ignored = f"; {len(self.ignored)} unused keys ignored" if self.ignored else ""
        return f"{self.path}: " + (", ".join(parts) or "every key loaded") + ignored

    def __str__(self) -> str:
        return (
            f"LoadReport({self.path}: missing={self.missing}, unexpected={self.unexpected}, "
            f"mismatched={self.mismatched}, ignored={self.ignored}, interpolated={self.interpolated})"
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_EXPORT_RECIPE = (
    "export the weights from the code that trained the model, without unpickling this file: "
    "safetensors.torch.save_file(net.state_dict(), 'model.safetensors'), then load that .safetensors file"
)


class InertObject:
    """Stand-in for a class or function pickled in a trainer checkpoint: it records the arguments and state the
    pickle gives it and runs nothing (the original class is never imported). ``pickled_global`` is its name."""

    pickled_global = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_global}>"


def _inert_stand_ins(path: Path) -> list[tuple[type, str]]:
    """One :class:`InertObject` subclass per global the file pickles beyond torch's weights-only allowlist.

    The scan disassembles the pickle statically (no code runs); legacy (non-zip) files, and torch < 2.6 (no scan),
    get no stand-ins.
    """
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return []
    try:
        names = scan(str(path))
    except (ValueError, RuntimeError):
        return []
    return [(type(n.rsplit(".", 1)[-1], (InertObject,), {"pickled_global": n}), n) for n in names]


def _type_name(value: Any) -> str:
    """Type of a loaded value; for a stand-in, the name of the global it replaced."""
    return value.pickled_global if isinstance(value, InertObject) else type(value).__name__


def _torch_error_summary(err: Exception) -> str:
    """The informative line of a ``torch.load`` error, ANSI codes removed."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(err)).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "WeightsUnpickler error" in ln or "GLOBAL" in ln), lines[0] if lines else "")
    return f"{type(err).__name__}: {detail.split(' Please use')[0]}"  # without torch's advice to allowlist


def load_trainer_checkpoint(path: str | Path) -> tuple[Any, list[str]]:
    """Load a ``torch.save`` file written by a trainer (OSTrack/DropTrack ``settings`` objects, numpy scalars, ...)
    with ``weights_only=True`` and without running any pickled code.

    Every class or function the file pickles beyond torch's allowlist is replaced by an :class:`InertObject`
    (its original code is never imported or called); tensors and plain containers load as usual. Returns
    ``(object, names of the globals that were stood in for)``.

    Example:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "ck.pth"
        ...     torch.save({"net": {"w": torch.ones(1)}, "epoch": 3}, p)
        ...     obj, stand_ins = load_trainer_checkpoint(p)
        >>> obj["epoch"], stand_ins
        (3, [])
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    stand_ins = _inert_stand_ins(path)
    try:
        with torch.serialization.safe_globals(stand_ins) if stand_ins else contextlib.nullcontext():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, ... all mean "not loadable without running code"
        names = sorted(set(_PICKLED_GLOBAL.findall(_ANSI.sub("", str(err)))))
        named = (
            f" It references {names}, which were not stood in for (a module torch always blocks, or a legacy non-zip "
            "file whose globals cannot be listed without unpickling)."
            if names
            else ""
        )
        raise CheckpointFormatError(
            f"could not load {path} with torch.load(weights_only=True).{named} To use it, {_EXPORT_RECIPE}. "
            f"Cause: {_torch_error_summary(err)}"
        ) from err
    return obj, [name for _, name in stand_ins]


def read_weights_only(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor state dict of a checkpoint, read without running pickled code.

    ``.safetensors`` files are read with safetensors; other files with :func:`load_trainer_checkpoint` (so trainer
    files with pickled ``settings`` objects load, their classes stood in for by inert objects). Takes the ``"net"``
    entry (OSTrack), else ``"model"``/``"state_dict"``, else the object itself; strips a ``module.`` (DDP) prefix.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        obj: Any = load_file(str(path))
        stand_ins: list[str] = []
    else:
        obj, stand_ins = load_trainer_checkpoint(path)
    if stand_ins:
        logger.info("%s: ignored pickled objects of %s (loaded as inert stand-ins)", path, stand_ins)
    state: Any = obj
    if isinstance(obj, Mapping):
        for key in ("net", "model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointFormatError(
            f"{path} does not contain a state dict (a non-empty mapping of tensors); found {type(state).__name__}"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        kinds = sorted({_type_name(state[k]) for k in bad})
        raise CheckpointFormatError(
            f"{path}: state dict entries are not tensors: {bad[:5]} (types {kinds}); {_EXPORT_RECIPE}"
        )
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


def _resize_pos_embed(pe: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, n·n, D) -> (1, grid·grid, D), bicubic (OSTrack's rule)."""
    n = math.isqrt(pe.shape[1])
    d = pe.shape[-1]
    img = pe.reshape(1, n, n, d).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pe.dtype)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def load_rgb_checkpoint(model: OSTrackRGBX, path: str | Path, strict: bool = False) -> LoadReport:
    """Load an RGB OSTrack/DropTrack checkpoint (``.pth.tar``/``.pth``) into ``model``.

    Works for every architecture: the RGB weights go to the parameters of the RGB roles (``backbone``/``box_head``)
    and are copied on into the architecture's own modules as in :meth:`OSTrackRGBX.from_rgb`. Key handling:
    ``backbone.pos_embed_z``/``pos_embed_x`` are used (bicubically resized if their grid differs); without them, the
    2-D ``backbone.pos_embed`` (e.g. 14×14 + cls) is resized to both grids. A bare timm ViT state dict (no
    ``backbone.`` prefix, e.g. MAE) is prefixed. Keys the tracker never uses (cls token, ``pos_embed``, a classifier
    ``head``) go to ``ignored``. Entries that are missing
    or mismatched keep the model's current values.

    Args:
        strict: raise :class:`PartialLoadError` (a ``ValueError`` naming the file, the counts and a few keys of each
            kind) and change nothing if anything is missing, unexpected or mismatched. Ignored keys do not count.
    """
    state = read_weights_only(path)
    if not any(k.startswith(("backbone.", "box_head.")) for k in state):
        state = {f"backbone.{k}": v for k, v in state.items()}
    report = LoadReport(path=str(path))
    cfg = model.config
    roles = model.architecture.parameter_roles(model)
    expected = {k: v for k, v in model.state_dict().items() if roles[k] in RGB_ROLES}  # backbone.*, box_head.*

    mapped: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, grid in (("z", cfg.template_feat_size), ("x", cfg.search_feat_size)):
        key = f"backbone.pos_embed_{name}"
        want = expected[key].shape
        if key in state:
            used.add(key)
            pe = state[key]
            if pe.shape == want:
                mapped[key] = pe
            elif pe.ndim == 3 and pe.shape[-1] == want[-1] and _is_square(pe.shape[1]):
                mapped[key] = _resize_pos_embed(pe, grid)
                report.interpolated.append(f"{key} {tuple(pe.shape)} -> {tuple(want)}")
            else:
                report.mismatched.append(f"{key}: checkpoint {tuple(pe.shape)} vs model {tuple(want)}")
        elif "backbone.pos_embed" in state:
            pe = state["backbone.pos_embed"]
            n = pe.shape[1] if pe.ndim == 3 else 0
            if pe.ndim == 3 and pe.shape[-1] == want[-1] and (_is_square(n) or _is_square(n - 1)):
                grid_pe = pe if _is_square(n) else pe[:, 1:]
                mapped[key] = grid_pe if grid_pe.shape == want else _resize_pos_embed(grid_pe, grid)
                report.interpolated.append(f"backbone.pos_embed {tuple(pe.shape)} -> {key} {tuple(want)}")
            else:
                report.mismatched.append(f"{key}: cannot derive from backbone.pos_embed {tuple(pe.shape)}")
    for key, value in state.items():
        if key in used or key in ("backbone.pos_embed_z", "backbone.pos_embed_x"):
            continue
        if key in expected:
            if value.shape == expected[key].shape:
                mapped[key] = value
            else:
                want = tuple(expected[key].shape)
                report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {want}")
        elif key in _IGNORABLE or key.startswith(_IGNORABLE_PREFIXES):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    mismatched_keys = {m.split(":")[0] for m in report.mismatched}
    report.missing = [k for k in expected if k not in mapped and k not in mismatched_keys]

    if strict and not report.ok:
        raise PartialLoadError(f"checkpoint {report.summary()}; strict load: the model was not changed")
    merged = {k: mapped.get(k, v) for k, v in expected.items()}
    model.init_from_rgb(merged)
    level = logging.INFO if report.ok else logging.WARNING
    logger.log(level, "%s", report)
    return report


def save_tracker(model: OSTrackRGBX, directory: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (all parameters and buffers) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, **model.config.to_dict()}
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "model_type": MODEL_TYPE})
    return directory


def load_tracker(directory: str | Path, device: str | torch.device = "cpu") -> OSTrackRGBX:
    """Rebuild a model saved by :func:`save_tracker` (strict: every key and shape must match)."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (expected a folder written by save_tracker)")
    try:
        meta = json.loads(cfg_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{cfg_path}: not a valid JSON tracker config ({err})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object, got {type(meta).__name__}")
    model_type = meta.pop("model_type", None)
    meta.pop("format_version", None)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{cfg_path}: model_type must be {MODEL_TYPE!r}, got {model_type!r}")
    try:
        config = TrackerConfig.from_dict(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{cfg_path}: invalid tracker config: {err}") from None
    model = OSTrackRGBX(config)
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # SafetensorError, OSError, ...: a truncated or foreign file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({type(err).__name__}: {err})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{weights_path} does not match its config: missing={missing}, unexpected={unexpected}, "
            f"mismatched={mismatched}"
        )
    model.load_state_dict(state)
    return model.to(device)
