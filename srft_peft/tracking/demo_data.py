"""A small, deterministic RGB-X demo benchmark rendered from a real photograph that ships with matplotlib.

Each sequence moves a target patch cut from ``grace_hopper.jpg`` (matplotlib's ``mpl-data/sample_data``) over a
panning background made from other parts of that photograph or from the Jacksboro-fault elevation model (shaded),
with scale changes, a look-alike distractor, partial occlusion by a pole and short absences. The X modality of the
same scene is rendered too:

* thermal (``rgbt``): the target is hot, background/distractor/occluder cool; blurred grey levels as 3 channels;
* depth (``rgbd``): 16-bit PNG in millimetres, the target nearer than the background, the pole nearer still;
* events (``rgbe``): log-intensity changes between consecutive frames of the well-lit scene, positive events red
  and negative blue on black.

About 40 % of the sequences are shot in **low light**: the RGB frames are dark and noisy while thermal, depth and
events still show the target, and the distractor looks like the target in RGB but not in X, so a tracker fine-tuned
on RGB-X has something to learn over an RGB-only one.

The sets are written in the real on-disk layouts so the real loaders read them: RGB-T as LasHeR, RGB-D as
DepthTrack, RGB-E as VisEvent, RGB as ``<seq>/img`` + ``groundtruth.txt``.

Version 2 (``version=2``, opt-in; version 1 stays the default) is a held-out benchmark with statistical power: object
and background regions of several matplotlib sample images are split into disjoint pools (pretrain / train / val /
test / retention), so no split sees another's source pixels; RGB-X sets have 8 train, 24 val and 80 test sequences,
the RGB set 96 pretrain, 24 val and 40 retention sequences; thermal has per-object temperatures, crossovers with the
background and hot distractors, depth has near clutter, events have darkness and fast motion (see
``docs/tracking.md``, "Demo data v2").

Example:
    >>> from srft_peft.tracking.demo_data import make_demo_dataset, load_demo_dataset
    >>> root = make_demo_dataset(modality="rgbt")  # ~/.cache/srft_peft/demo/rgbt  # doctest: +SKIP
    >>> train = load_demo_dataset("rgbt", "train")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .cache import file_lock
from .datasets import Sequence, demo_datasets, load_dataset

__all__ = [
    "DEMO_LAYOUTS",
    "GENERATOR_VERSION",
    "V2_SPLITS",
    "DemoConfig",
    "default_demo_root",
    "demo_set_root",
    "make_demo_dataset",
    "load_demo_dataset",
    "render_sequence",
]

GENERATOR_VERSION = 1  # the default generator (the shipped demo); version 2 is opt-in via DemoConfig.version
#: modality -> the dataset whose layout its demo set is written in (the ``demo`` records of DATASETS).
DEMO_LAYOUTS = demo_datasets()
_SPLITS = ("train", "test")

# Regions of grace_hopper.jpg (512 x 600) used as targets: (x1, y1, x2, y2).
_TARGET_REGIONS = (
    (185, 150, 365, 330),  # face
    (195, 20, 340, 110),  # cap badge
    (322, 484, 455, 528),  # ribbons
    (75, 478, 170, 520),  # name tag
    (170, 160, 365, 240),  # glasses
    (0, 40, 135, 205),  # stars
    (225, 565, 270, 600),  # button
    (150, 20, 375, 180),  # cap
)


# Version 2: the splits of each modality (split name = name of the source pool it draws from) and default sizes.
V2_SPLITS = {"rgbt": ("train", "val", "test"), "rgbd": ("train", "val", "test"), "rgbe": ("train", "val", "test"),
             "rgb": ("pretrain", "val", "retention")}
_V2_POOLS = ("pretrain", "train", "val", "test", "retention")
_DEFAULTS = {
    1: {"num_train": 8, "num_test": 4, "frames": 48, "image_size": (160, 120)},
    2: {"num_train": 8, "num_val": 24, "num_test": 80, "num_pretrain": 96, "num_retention": 40, "frames": 24,
        "image_size": (128, 96)},
}


@dataclass
class DemoConfig:
    """Parameters of a demo set (all of them go into ``MANIFEST.json``); ``None`` sizes take the version's default."""

    modality: str = field(default="rgbt", metadata={"help": "'rgbt', 'rgbd', 'rgbe' or 'rgb'."})
    num_train: int | None = field(
        default=None, metadata={"help": "Training sequences (v1: 8; v2 RGB-X: 8; not a split of v2 'rgb')."}
    )
    num_test: int | None = field(
        default=None, metadata={"help": "Test sequences (v1: 4; v2 RGB-X: 80; not a split of v2 'rgb')."}
    )
    frames: int | None = field(default=None, metadata={"help": "Frames per sequence (v1: 48, v2: 24)."})
    image_size: tuple[int, int] | None = field(
        default=None, metadata={"help": "Frame size (width, height) (v1: 160 x 120, v2: 128 x 96)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed; the same seed gives byte-identical files."})
    version: int = field(
        default=GENERATOR_VERSION,
        metadata={"help": "Generator: 1 (the first demo set: train/test) or 2 (the held-out set with disjoint object "
                          "and background pools that the examples, the shipped tracker and the benchmark use: "
                          "train/val/test for RGB-X, pretrain/val/retention for RGB)."},
    )
    num_val: int | None = field(default=None, metadata={"help": "v2 only: validation sequences (24)."})
    num_pretrain: int | None = field(default=None, metadata={"help": "v2 'rgb' only: RGB pretraining sequences (96)."})
    num_retention: int | None = field(
        default=None, metadata={"help": "v2 'rgb' only: RGB retention test sequences (40)."}
    )

    def __post_init__(self) -> None:
        if self.modality not in DEMO_LAYOUTS:
            raise ValueError(f"DemoConfig.modality must be one of {sorted(DEMO_LAYOUTS)}, got {self.modality!r}")
        if isinstance(self.version, bool) or self.version not in _DEFAULTS:
            raise ValueError(f"DemoConfig.version must be one of {sorted(_DEFAULTS)}, got {self.version!r}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"DemoConfig.seed must be a non-negative integer, got {self.seed!r}")
        splits = self.splits
        for name in ("num_train", "num_val", "num_test", "num_pretrain", "num_retention"):
            value = getattr(self, name)
            if name[4:] not in splits:
                if value is not None:
                    raise ValueError(
                        f"DemoConfig.{name} is not a split of version-{self.version} {self.modality!r} sets "
                        f"(splits: {', '.join(splits)}), got {value!r}"
                    )
                continue
            value = _DEFAULTS[self.version][name] if value is None else value
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"DemoConfig.{name} must be a non-negative integer, got {value!r}")
            setattr(self, name, int(value))
        self.frames = _DEFAULTS[self.version]["frames"] if self.frames is None else self.frames
        if not isinstance(self.frames, (int, np.integer)) or isinstance(self.frames, bool) or self.frames < 2:
            raise ValueError(f"DemoConfig.frames must be an integer >= 2, got {self.frames!r}")
        self.frames = int(self.frames)
        size = _DEFAULTS[self.version]["image_size"] if self.image_size is None else self.image_size
        try:
            size = tuple(int(v) for v in size)
        except (TypeError, ValueError):
            size = ()
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"DemoConfig.image_size must be (width, height) with both >= 32, got {self.image_size!r}")
        self.image_size = size

    @property
    def splits(self) -> tuple[str, ...]:
        """The split folders this configuration writes."""
        return _SPLITS if self.version == 1 else V2_SPLITS[self.modality]

    @property
    def split_sizes(self) -> dict[str, int]:
        """Number of sequences of each split."""
        return {split: getattr(self, f"num_{split}") for split in self.splits}

    def params(self) -> dict[str, Any]:
        """The manifest's ``params``: v1 keeps exactly its original keys, so existing v1 sets stay valid."""
        params = {"modality": self.modality, "frames": self.frames, "image_size": list(self.image_size),
                  "seed": self.seed, **{f"num_{s}": n for s, n in self.split_sizes.items()}}
        return params if self.version == 1 else {**params, "version": self.version}


def default_demo_root() -> Path:
    """``$SRFT_DEMO_ROOT`` if set, else ``~/.cache/srft_peft/demo``."""
    env = os.environ.get("SRFT_DEMO_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srft_peft" / "demo"


def demo_set_root(modality: str, version: int = GENERATOR_VERSION) -> Path:
    """Default folder of a demo set: ``default_demo_root() / modality`` (v1), ``default_demo_root() / "v2" / modality``
    (v2), so the two versions never rebuild each other's files."""
    return default_demo_root() / modality if version == 1 else default_demo_root() / f"v{version}" / modality


# ----------------------------------------------------------------------------------------------------------------------
# Source images
# ----------------------------------------------------------------------------------------------------------------------
def _sample_data(name: str) -> Path:
    import matplotlib  # imported lazily: only the generator needs it

    path = Path(matplotlib.get_data_path()) / "sample_data" / name
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib sample data {name!r} not found at {path}; reinstall matplotlib")
    return path


@functools.lru_cache(maxsize=1)
def _photo() -> np.ndarray:
    with Image.open(_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


@functools.lru_cache(maxsize=1)
def _terrain() -> np.ndarray:
    """Shaded relief of matplotlib's Jacksboro-fault elevation model as an RGB float image."""
    with np.load(_sample_data("jacksboro_fault_dem.npz")) as data:
        return _shaded_relief(np.asarray(data["elevation"], dtype=np.float32))


def _shaded_relief(z: np.ndarray) -> np.ndarray:
    """Hill-shaded, height-coloured RGB float image of an elevation grid."""
    gy, gx = np.gradient(z)
    slope = np.arctan(np.hypot(gx, gy) / 4.0)
    aspect = np.arctan2(-gx, gy)
    az, alt = np.deg2rad(315.0), np.deg2rad(45.0)
    shade = np.sin(alt) * np.cos(slope) + np.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    shade = np.clip(shade, 0, 1)
    t = (z - z.min()) / max(float(z.max() - z.min()), 1e-6)
    low, high = np.array([0.35, 0.45, 0.25], np.float32), np.array([0.80, 0.70, 0.55], np.float32)
    colour = low + t[..., None] * (high - low)
    return np.clip(colour * (0.35 + 0.75 * shade[..., None]), 0, 1)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float [0, 1] image (H, W, C) or (H, W) with PIL (bilinear, per channel in float mode)."""
    width, height = max(int(width), 1), max(int(height), 1)
    if img.ndim == 2:
        return np.asarray(
            Image.fromarray(np.ascontiguousarray(img, dtype=np.float32)).resize((width, height), Image.BILINEAR)
        )
    return np.stack([_resize(img[..., c], width, height) for c in range(img.shape[2])], axis=2)


def _lum(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


# ----------------------------------------------------------------------------------------------------------------------
# Scene rendering
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class _Layer:
    patch: np.ndarray  # (h0, w0, 3) base appearance, or (h0, w0, 4) with an opacity mask as the last channel
    centres: np.ndarray  # (T, 2) positions in frame coordinates
    scales: np.ndarray  # (T,)
    size: np.ndarray  # (2,) base w, h in pixels
    shown: np.ndarray  # (T,) bool
    heat: tuple[float, float]  # thermal = heat[0] + heat[1] * luminance
    depth: float  # millimetres; <= 0: the layer does not show in depth
    role: str = "target"
    blur: np.ndarray | None = None  # (T,) int: sub-frame positions averaged for motion blur (v2); None = 1
    _cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def resized(self, w: int, h: int) -> np.ndarray:
        """The appearance (and mask) at ``w x h`` pixels, cached since scales repeat."""
        if (w, h) not in self._cache:
            self._cache[(w, h)] = _resize(self.patch, w, h)
        return self._cache[(w, h)]


def _walk(
    rng: np.random.Generator,
    steps: int,
    width: int,
    height: int,
    size: np.ndarray,
    scales: np.ndarray,
    boost: np.ndarray | None = None,
) -> np.ndarray:
    """Smooth random walk of a box centre that keeps the (scaled) box inside the frame.

    ``boost`` (T,) > 1 marks fast-motion frames: there the speed is set to ``4 * boost`` pixels per frame.
    """
    pos = np.array([rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height])
    angle = rng.uniform(0, 2 * np.pi)
    vel = rng.uniform(0.8, 2.5) * np.array([np.cos(angle), np.sin(angle)])
    out = np.zeros((steps, 2))
    for t in range(steps):
        half = size * scales[t] / 2 + 1
        lo, hi = half, np.array([width, height]) - half
        vel = 0.85 * vel + rng.normal(0, 0.7, 2)
        speed = np.linalg.norm(vel)
        limit = 4.0 if boost is None else 4.0 * float(boost[t])
        if boost is not None and boost[t] > 1:
            vel *= limit / max(speed, 1e-6)
        elif speed > limit:
            vel *= limit / speed
        pos = pos + vel
        for a in range(2):
            if pos[a] < lo[a]:
                pos[a], vel[a] = 2 * lo[a] - pos[a], abs(vel[a])
            if pos[a] > hi[a]:
                pos[a], vel[a] = 2 * hi[a] - pos[a], -abs(vel[a])
            pos[a] = min(max(pos[a], lo[a]), hi[a])
        out[t] = pos
    return out


def _placement(
    layer: _Layer, t: int, width: int, height: int, centre: np.ndarray | None = None
) -> tuple[int, int, int, int]:
    """Box ``x, y, w, h`` of ``layer`` in frame ``t`` (at ``centre`` if given), clipped into the frame."""
    centre = layer.centres[t] if centre is None else centre
    w = max(int(round(layer.size[0] * layer.scales[t])), 4)
    h = max(int(round(layer.size[1] * layer.scales[t])), 4)
    x = int(round(centre[0] - w / 2))
    y = int(round(centre[1] - h / 2))
    x = min(max(x, 0), width - w)
    y = min(max(y, 0), height - h)
    return x, y, w, h


@dataclass
class _Frame:
    rgb: np.ndarray  # uint8 (H, W, 3) as shown to the RGB camera
    lum: np.ndarray  # float (H, W) well-lit luminance (for events)
    thermal: np.ndarray  # uint8 (H, W); empty if not requested
    depth: np.ndarray  # uint16 (H, W) millimetres; empty if not requested
    box: tuple[int, int, int, int] | None
    boxes: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (role, box) of every layer shown, back to front


@dataclass
class _Scene:
    """Everything drawn in one sequence; :func:`_render_frames` turns it into frames."""

    canvas: np.ndarray  # (ch, cw, 3) background, larger than the frame for camera panning
    offsets: np.ndarray  # (T, 2) float camera position (top-left) on the canvas per frame
    layers: list[_Layer]  # back to front; the one with role "target" is annotated
    bg_depth: np.ndarray  # (ch, cw) millimetres
    pole: tuple[float, int] | None  # static occluding pole: canvas x, width
    pole_tex: np.ndarray  # (ch, 1, 3)
    gain: float  # illumination of the RGB camera
    noise_sigma: float  # RGB noise, in 8-bit levels
    bg_heat: tuple[float, float] = (0.15, 0.25)  # background thermal = bg_heat[0] + bg_heat_shift[t] + bg_heat[1] * lum
    bg_heat_shift: np.ndarray | None = None  # (T,) v2 thermal crossovers


def _paste(dst: np.ndarray, value: np.ndarray, mask: np.ndarray | None) -> None:
    """Write ``value`` over ``dst`` in place, blended by ``mask`` (broadcast to ``value``) when given."""
    if mask is None:
        dst[...] = value
    else:
        dst += mask * (value - dst)


def _draw_rgb(view: np.ndarray, layer: _Layer, t: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Draw ``layer`` into ``view`` and return its box; a motion-blurred frame (``layer.blur[t] > 1``) is the mean of
    the layer drawn at that many positions between its previous and current centre."""
    box = _placement(layer, t, width, height)
    shots = 1 if layer.blur is None or t == 0 else int(layer.blur[t])
    if shots <= 1:
        _paste_rgb(view, layer, box)
        return box
    background, mean = view.copy(), np.zeros_like(view)
    for k in range(shots):
        centre = layer.centres[t - 1] + (layer.centres[t] - layer.centres[t - 1]) * k / (shots - 1)
        shot = background.copy()
        _paste_rgb(shot, layer, _placement(layer, t, width, height, centre))
        mean += shot / shots
    view[...] = mean
    return box


def _paste_rgb(view: np.ndarray, layer: _Layer, box: tuple[int, int, int, int]) -> None:
    x, y, w, h = box
    p = layer.resized(w, h)
    _paste(view[y : y + h, x : x + w], p[..., :3], p[..., 3:] if p.shape[2] == 4 else None)


def _render_frames(
    scene: _Scene,
    width: int,
    height: int,
    rng: np.random.Generator,
    rng_thermal: np.random.Generator | None,
    rng_depth: np.random.Generator | None,
) -> Iterator[_Frame]:
    """Composite ``scene`` frame by frame; ``rng_thermal`` / ``rng_depth`` None: that channel is left empty."""
    for t in range(len(scene.offsets)):
        ox, oy = (int(round(v)) for v in scene.offsets[t])
        view = scene.canvas[oy : oy + height, ox : ox + width].copy()
        heat = None
        if rng_thermal is not None:
            shift = 0.0 if scene.bg_heat_shift is None else float(scene.bg_heat_shift[t])
            heat = scene.bg_heat[0] + shift + scene.bg_heat[1] * _lum(view)
        depth = scene.bg_depth[oy : oy + height, ox : ox + width].copy() if rng_depth is not None else None
        box, boxes = None, []
        for layer in scene.layers:
            if not layer.shown[t]:
                continue
            x, y, w, h = _draw_rgb(view, layer, t, width, height)
            p = layer.resized(w, h)
            mask = p[..., 3] if p.shape[2] == 4 else None
            lum_p = _lum(p[..., :3])
            if heat is not None:
                _paste(heat[y : y + h, x : x + w], layer.heat[0] + layer.heat[1] * lum_p, mask)
            if depth is not None and layer.depth > 0:
                _paste(depth[y : y + h, x : x + w], layer.depth + 150.0 * (lum_p - 0.5), mask)
            if layer.role == "target":
                box = (x, y, w, h)
            boxes.append((layer.role, (x, y, w, h)))
        if scene.pole is not None:
            px = int(round(scene.pole[0] - ox))
            xa, xb = max(px, 0), min(px + scene.pole[1], width)
            if xb > xa:
                view[:, xa:xb] = scene.pole_tex[oy : oy + height]
                if heat is not None:
                    heat[:, xa:xb] = 0.3
                if depth is not None:
                    depth[:, xa:xb] = 700.0
        lum = _lum(view)
        noise = rng.standard_normal(view.shape, dtype=np.float32) * np.float32(scene.noise_sigma / 255.0)
        rgb8 = np.clip(np.round((view * np.float32(scene.gain) + noise) * 255.0), 0, 255).astype(np.uint8)
        heat8 = np.zeros((0, 0), np.uint8)
        if heat is not None:
            heat8 = np.clip(np.round(heat * 255.0), 0, 255).astype(np.uint8)
            heat8 = np.asarray(Image.fromarray(heat8).filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
            heat8 += rng_thermal.standard_normal(heat8.shape, dtype=np.float32) * np.float32(2.5)
            heat8 = np.clip(np.round(heat8), 0, 255).astype(np.uint8)
        depth16 = np.zeros((0, 0), np.uint16)
        if depth is not None:
            depth = depth * (rng_depth.random(depth.shape, dtype=np.float32) > 0.005)  # a few invalid (0) pixels
            depth16 = np.clip(np.round(depth), 0, 65535).astype(np.uint16)
        yield _Frame(rgb8, lum, heat8, depth16, box, tuple(boxes))


def _crop_canvas(
    rng: np.random.Generator, source: np.ndarray, region: tuple[int, int, int, int], cw: int, ch: int, frac: tuple
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A random crop of ``region`` of ``source`` with the canvas' aspect, resized to ``cw x ch``, maybe mirrored and
    re-coloured; returns it and the crop box ``(x1, y1, x2, y2)`` in source pixels."""
    x0, y0, x1, y1 = region
    sw, sh = x1 - x0, y1 - y0
    f = rng.uniform(*frac)
    crop_w = int(min(sw, sh * cw / ch) * f)
    crop_h = int(crop_w * ch / cw)
    bx, by = x0 + int(rng.integers(0, sw - crop_w + 1)), y0 + int(rng.integers(0, sh - crop_h + 1))
    canvas = _resize(source[by : by + crop_h, bx : bx + crop_w], cw, ch)
    if rng.random() < 0.5:
        canvas = canvas[:, ::-1]
    canvas = np.clip(canvas * rng.uniform(0.85, 1.1, 3).astype(np.float32), 0, 1)
    return canvas, (bx, by, bx + crop_w, by + crop_h)


def _bg_depth(canvas: np.ndarray) -> np.ndarray:
    """Background depth in mm: a ground plane receding upwards, modulated by the texture."""
    ch = canvas.shape[0]
    plane = (2500.0 + 4500.0 * (1.0 - np.arange(ch, dtype=np.float32) / ch))[:, None]
    return plane + 500.0 * (_lum(canvas) - 0.5)


def _scale_walk(rng: np.random.Generator, steps: int) -> np.ndarray:
    return np.exp(np.clip(np.cumsum(rng.normal(0, 0.025, steps)), math.log(0.75), math.log(1.35)))


def _pole(rng: np.random.Generator, centres: np.ndarray, size: np.ndarray, offsets: np.ndarray) -> tuple[float, int]:
    """A static pole across the target's path at a random frame (canvas x, width)."""
    steps = len(centres)
    t_mid = int(rng.integers(steps // 4, 3 * steps // 4))
    pole_w = max(int(size[0] * rng.uniform(0.35, 0.6)), 3)
    px = centres[t_mid, 0] + rng.uniform(-0.2, 0.2) * size[0] - pole_w / 2
    return px + offsets[t_mid, 0], pole_w


def render_sequence(
    seed: int,
    split: str,
    index: int,
    frames: int,
    image_size: tuple[int, int],
    channels: tuple[str, ...] = ("thermal", "depth"),
) -> Iterator[_Frame]:
    """Render one version-1 demo sequence frame by frame; frame ``-1`` is rendered first (for the events).

    ``channels`` lists the X renderings to compute (``"thermal"``, ``"depth"``); the others are left empty. The
    scene depends only on ``(seed, split, index)`` (each rendering has its own noise stream), so the four
    modalities show the same scenes with the same RGB frames.
    """
    width, height = image_size
    rng = np.random.default_rng([int(seed), _SPLITS.index(split), int(index), 7])
    rng_thermal = np.random.default_rng([int(seed), _SPLITS.index(split), int(index), 8])
    rng_depth = np.random.default_rng([int(seed), _SPLITS.index(split), int(index), 9])
    steps = frames + 1  # one extra leading frame so that frame 0 has events
    photo = _photo()
    ph, pw = photo.shape[:2]

    # Background canvas (larger than the frame, for camera panning).
    margin = int(0.3 * width)
    cw, ch = width + 2 * margin, height + 2 * margin
    source = _terrain() if rng.random() < 0.35 else photo
    canvas, _ = _crop_canvas(rng, source, (0, 0, source.shape[1], source.shape[0]), cw, ch, (0.35, 0.9))
    pan = rng.uniform(-0.45, 0.45, 2)
    start = np.array([margin, margin]) + rng.uniform(-0.3, 0.3, 2) * margin
    offsets = start + pan * np.arange(steps)[:, None]

    # Target.
    x1, y1, x2, y2 = _TARGET_REGIONS[int(rng.integers(len(_TARGET_REGIONS)))]
    jx, jy = rng.uniform(-0.08, 0.08, 2) * np.array([x2 - x1, y2 - y1])
    x1, x2 = int(np.clip(x1 + jx, 0, pw - 8)), int(np.clip(x2 + jx, 8, pw))
    y1, y2 = int(np.clip(y1 + jy, 0, ph - 8)), int(np.clip(y2 + jy, 8, ph))
    patch = photo[y1:y2, x1:x2]
    patch = np.clip((patch - 0.5) * 1.25 + 0.5, 0, 1)
    aspect = float(np.clip((x2 - x1) / (y2 - y1), 0.5, 2.0))
    side = rng.uniform(0.14, 0.24) * min(width, height)
    size = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)])
    scales = _scale_walk(rng, steps)
    centres = _walk(rng, steps, width, height, size, scales)
    shown = _absences(rng, steps, 0.3)  # short absence
    target = _Layer(patch, centres, scales, size, shown, heat=(0.70, 0.25), depth=rng.uniform(1000, 1800))

    layers = []
    if rng.random() < 0.5:  # look-alike distractor: cool in thermal, at background depth
        d_patch = np.clip(patch[:, ::-1] * rng.uniform(0.9, 1.1, 3).astype(np.float32), 0, 1)
        d_scales = _scale_walk(rng, steps)
        d_size = size * rng.uniform(0.85, 1.15)
        d_centres = _walk(rng, steps, width, height, d_size, d_scales)
        layers.append(_Layer(d_patch, d_centres, d_scales, d_size, np.ones(steps, bool), (0.22, 0.22), -1.0, "distractor"))
    layers.append(target)
    pole = _pole(rng, centres, size, offsets) if rng.random() < 0.4 else None  # partial occlusion
    pole_tex = canvas[:, int(rng.integers(0, cw - 8)) :][:, :8].mean(axis=1, keepdims=True) * 0.6

    dark = rng.random() < 0.4
    gain = rng.uniform(0.06, 0.15) if dark else 1.0
    scene = _Scene(canvas, offsets, layers, _bg_depth(canvas), pole, pole_tex, gain, 6.0 if dark else 1.5)
    want_heat, want_depth = "thermal" in channels, "depth" in channels
    yield from _render_frames(scene, width, height, rng, rng_thermal if want_heat else None,
                              rng_depth if want_depth else None)


def _events(prev_lum: np.ndarray, lum: np.ndarray, rng: np.random.Generator, noise_rate: float = 0.002) -> np.ndarray:
    """Event frame of the log-intensity change: positive red, negative blue, ``noise_rate`` spurious events each."""
    diff = np.log(lum * 255.0 + 10.0) - np.log(prev_lum * 255.0 + 10.0)
    img = np.zeros(lum.shape + (3,), np.uint8)
    noise = rng.random(lum.shape)
    pos = (diff > 0.12) | (noise < noise_rate)
    neg = (diff < -0.12) | ((noise >= noise_rate) & (noise < 2 * noise_rate))
    img[pos] = (255, 60, 60)
    img[neg] = (60, 60, 255)
    return img


# ----------------------------------------------------------------------------------------------------------------------
# Version 2: disjoint source pools
# ----------------------------------------------------------------------------------------------------------------------
# Every source image is cut into a grid of regions; each region is an object region or a background region (or unused)
# and belongs to exactly one pool. A split draws every object, clutter piece and background of every scene from the
# regions of its own pool, so no source pixel is shared by two pools.
_V2_SOURCES = {  # name: (file in matplotlib's sample_data, grid cell width, height)
    "grace_hopper": ("grace_hopper.jpg", 64, 60),
    "mri": ("s1045.ima.gz", 64, 64),
    "logo": ("logo2.png", 90, 130),
    "present": ("Minduka_Present_Blue_Pack.png", 64, 64),
    "jacksboro": ("jacksboro_fault_dem.npz", 80, 68),
    "topobathy": ("topobathy.npz", 60, 91),
}
_V2_POOL_SHARE = {"pretrain": 0.25, "train": 0.10, "val": 0.15, "test": 0.35, "retention": 0.15}
_V2_SHAPES = ("rect", "ellipse", "diamond", "rounded")


@functools.cache
def _v2_image(name: str) -> np.ndarray:
    """Source ``name`` as a float RGBA image (H, W, 4) in [0, 1]; alpha is 1 where the file has none."""
    path = _sample_data(_V2_SOURCES[name][0])
    if name == "grace_hopper":
        rgb = _photo()
    elif name == "jacksboro":
        rgb = _terrain()
    elif name == "topobathy":
        with np.load(path) as data:
            rgb = _shaded_relief(np.asarray(data["topo"], dtype=np.float32))
    elif name == "mri":  # 256 x 256 unsigned 16-bit MRI slice (as matplotlib's own example reads it)
        with gzip.open(path) as fh:
            mri = np.frombuffer(fh.read(), np.uint16).reshape(256, 256).astype(np.float32)
        rgb = np.repeat(np.clip(mri / np.percentile(mri, 99.5), 0, 1)[..., None], 3, axis=2)
    else:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    return np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], axis=2)


def _v2_role(name: str, cell: np.ndarray) -> str | None:
    """Whether a grid cell serves as an ``"object"`` or a ``"background"`` region, or is left out (``None``)."""
    if name in ("jacksboro", "topobathy"):
        return "background"
    if name == "grace_hopper":  # textured cells are objects, flat ones (wall, dark cloth) backgrounds
        return "object" if _lum(cell[..., :3]).std() >= 0.06 else "background"
    if name == "mri":
        return "object" if _lum(cell[..., :3]).mean() >= 0.12 else None
    return "object" if cell[..., 3].mean() >= 0.15 else None  # logo letters, present: enough opaque pixels


@functools.lru_cache(maxsize=1)
def _v2_pools() -> dict[str, dict[str, list[tuple[str, int, int, int, int]]]]:
    """``{pool: {"objects": [...], "backgrounds": [...]}}``, regions as ``(source, x1, y1, x2, y2)``.

    Fixed (independent of the seed), so sets of any seed and modality agree. Each source's cells are taken in a fixed
    shuffled order and each goes to the pool furthest below its share (``_V2_POOL_SHARE``), so every pool gets regions
    of every source.
    """
    pools = {pool: {"objects": [], "backgrounds": []} for pool in _V2_POOLS}
    counts = {role: dict.fromkeys(_V2_POOLS, 0) for role in ("objects", "backgrounds")}
    order = np.random.default_rng(20240).permutation  # fixed: the assignment is part of the format
    for name, (_, cw, ch) in _V2_SOURCES.items():
        img = _v2_image(name)
        cells = [(x, y, x + cw, y + ch) for y in range(0, img.shape[0] - ch + 1, ch)
                 for x in range(0, img.shape[1] - cw + 1, cw)]
        for i in order(len(cells)):
            x1, y1, x2, y2 = cells[i]
            role = _v2_role(name, img[y1:y2, x1:x2])
            if role is None:
                continue
            key = role + "s"
            total = sum(counts[key].values()) + 1
            pool = max(_V2_POOLS, key=lambda p: _V2_POOL_SHARE[p] * total - counts[key][p])
            counts[key][pool] += 1
            pools[pool][key].append((name, x1, y1, x2, y2))
    return pools


def _shape_mask(kind: str, h: int, w: int) -> np.ndarray:
    """Soft-edged (h, w) opacity of a ``kind`` silhouette filling the box."""
    if kind == "rect":
        return np.ones((h, w), np.float32)
    yy = ((np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1)[:, None]
    xx = ((np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1)[None, :]
    dist = {"ellipse": np.hypot(xx, yy), "diamond": np.abs(xx) + np.abs(yy), "rounded": (xx**4 + yy**4) ** 0.25}[kind]
    return np.clip((1.0 - dist) * min(h, w) / 3.0, 0, 1)


def _v2_object(
    rng: np.random.Generator, region: tuple[str, int, int, int, int], shape: str | None = None
) -> tuple[np.ndarray, list[Any], str]:
    """A new object cut from ``region``: random sub-crop, colour mixing, mirror and silhouette.

    Returns the (h, w, 4) appearance with opacity, the crop as ``[source, x1, y1, x2, y2]`` and the silhouette.
    """
    name, x0, y0, x1, y1 = region
    img = _v2_image(name)
    w, h = (int(round(d * rng.uniform(0.6, 1.0))) for d in (x1 - x0, y1 - y0))
    cx, cy = x0 + int(rng.integers(0, x1 - x0 - w + 1)), y0 + int(rng.integers(0, y1 - y0 - h + 1))
    opaque = img[cy : cy + h, cx : cx + w, 3] > 0.5
    if opaque.mean() < 0.1:  # mostly transparent sub-crop (logo, present): take the whole region
        cx, cy, w, h = x0, y0, x1 - x0, y1 - y0
        opaque = img[cy : cy + h, cx : cx + w, 3] > 0.5
    rows, cols = np.flatnonzero(opaque.any(axis=1)), np.flatnonzero(opaque.any(axis=0))  # tight box of the opaque part
    cx, cy, w, h = cx + int(cols[0]), cy + int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
    crop = img[cy : cy + h, cx : cx + w]
    mix = np.eye(3, dtype=np.float32) + rng.normal(0, 0.15, (3, 3)).astype(np.float32)
    if rng.random() < 0.3:
        mix = mix[rng.permutation(3)]
    shape = shape or _V2_SHAPES[int(rng.integers(len(_V2_SHAPES)))]
    patch = np.concatenate([np.clip(crop[..., :3] @ mix.T, 0, 1), (crop[..., 3] * _shape_mask(shape, h, w))[..., None]], 2)
    brightness = rng.uniform(0.3, 0.75) / max(_opaque_lum(patch), 0.05)  # dark cloth must not vanish on dark ground
    patch[..., :3] = np.clip((patch[..., :3] * np.float32(brightness) - 0.5) * 1.25 + 0.5, 0, 1)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch, dtype=np.float32), [name, cx, cy, cx + w, cy + h], shape


def _opaque_lum(patch: np.ndarray) -> float:
    """Mean luminance of the opaque part of an (h, w, 4) appearance."""
    return float((_lum(patch[..., :3]) * patch[..., 3]).sum() / max(float(patch[..., 3].sum()), 1e-6))


def _absences(rng: np.random.Generator, steps: int, p: float) -> np.ndarray:
    """(T,) visibility with, with probability ``p``, one absence of 3-5 frames (none in sequences under 12 frames)."""
    frames = steps - 1
    shown = np.ones(steps, bool)
    if rng.random() < p and frames >= 12:
        a = int(rng.integers(max(frames // 4, 2), frames - 4)) + 1
        shown[a : a + int(rng.integers(3, 6))] = False
    return shown


def _window(rng: np.random.Generator, steps: int, share: tuple[float, float], ramp: int = 2) -> np.ndarray:
    """(T,) weight in [0, 1]: 1 on a random window covering ``share`` of the frames, with linear ramps."""
    length = max(int(round(rng.uniform(*share) * steps)), 1)
    start = int(rng.integers(1, max(steps - length, 1) + 1))
    t = np.arange(steps, dtype=np.float64)
    up = np.clip((t - start + ramp) / (ramp + 1), 0, 1)
    down = np.clip((start + length - 1 + ramp - t) / (ramp + 1), 0, 1)
    return np.minimum(up, down)


# Per modality: probabilities of low light, fast-motion bursts and a static camera.
_V2_PROFILE = {
    "rgbt": {"dark": 0.35, "fast": 0.15, "static": 0.15},
    "rgbd": {"dark": 0.35, "fast": 0.15, "static": 0.15},
    "rgbe": {"dark": 0.55, "fast": 0.6, "static": 0.4},
    "rgb": {"dark": 0.1, "fast": 0.2, "static": 0.15},
}


class _V2Builder:
    """Draws one version-2 scene; ``record`` lists the source crops and attributes that go into the manifest."""

    def __init__(self, rng: np.random.Generator, modality: str, split: str, steps: int, size: tuple[int, int]):
        self.rng, self.modality, self.steps, (self.width, self.height) = rng, modality, steps, size
        self.pool = _v2_pools()[split]
        self.record: dict[str, Any] = {"objects": [], "backgrounds": [], "attributes": {}}

    def region(self, kind: str, avoid: int | None = None) -> int:
        """Index of a random region of the pool's ``kind`` list, other than ``avoid`` where there is a choice."""
        n = len(self.pool[kind])
        if avoid is None or n < 2:
            return int(self.rng.integers(n))
        i = int(self.rng.integers(n - 1))
        return i + (i >= avoid)

    def obj(self, kind: str, index: int, shape: str | None = None) -> tuple[np.ndarray, str]:
        patch, crop, shape = _v2_object(self.rng, self.pool[kind][index], shape)
        self.record[kind].append(crop)
        return patch, shape

    def layer(self, patch: np.ndarray, side: float, role: str, heat: tuple[float, float], depth: float,
              boost: np.ndarray | None = None, moving: bool = True) -> _Layer:
        rng, steps = self.rng, self.steps
        aspect = float(np.clip(patch.shape[1] / patch.shape[0], 0.5, 2.0))
        size = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)])
        scales = _scale_walk(rng, steps) if moving else np.ones(steps)
        centres = _walk(rng, steps, self.width, self.height, size, scales, boost)
        if not moving:
            centres = np.repeat(centres[:1], steps, axis=0)
        blur = None if boost is None else np.where(boost > 1, 4, 1)
        return _Layer(patch, centres, scales, size, np.ones(steps, bool), heat, depth, role, blur=blur)

    def bursts(self) -> np.ndarray:
        """(T,) speed factor: 1, and 2-3 during one or two bursts of 3-6 frames."""
        boost = np.ones(self.steps)
        for _ in range(int(self.rng.integers(1, 3))):
            length = int(self.rng.integers(3, 7))
            a = int(self.rng.integers(1, max(self.steps - length, 2)))
            boost[a : a + length] = self.rng.uniform(2.0, 3.0)
        return boost


def _v2_scene(seed: int, modality: str, split: str, index: int, steps: int, size: tuple[int, int]) -> tuple[_Scene, dict]:
    """Draw a version-2 scene of ``modality``: targets, distractors, clutter and background from ``split``'s pool."""
    rng = np.random.default_rng(_v2_key(seed, modality, split, index, 7))
    b = _V2Builder(rng, modality, split, steps, size)
    width, height = size
    profile = _V2_PROFILE[modality]
    attrs = b.record["attributes"]

    margin = int(0.3 * width)
    cw, ch = width + 2 * margin, height + 2 * margin
    bg = b.pool["backgrounds"][b.region("backgrounds")]
    canvas, crop = _crop_canvas(rng, _v2_image(bg[0])[..., :3], bg[1:], cw, ch, (0.6, 1.0))
    b.record["backgrounds"].append([bg[0], *crop])
    attrs["static_camera"] = bool(rng.random() < profile["static"])
    pan = np.zeros(2) if attrs["static_camera"] else rng.uniform(-0.45, 0.45, 2)
    offsets = np.array([margin, margin]) + rng.uniform(-0.3, 0.3, 2) * margin + pan * np.arange(steps)[:, None]

    t_index = b.region("objects")
    patch, shape = b.obj("objects", t_index)
    b.record["target"] = list(b.record["objects"][0])
    side = rng.uniform(0.18, 0.32) * min(width, height)
    attrs["fast_motion"] = bool(rng.random() < profile["fast"])
    temp = float(rng.uniform(0.45, 0.8))
    target = b.layer(patch, side, "target", (temp, 0.15), float(rng.uniform(1500, 3000)),
                     b.bursts() if attrs["fast_motion"] else None)
    target.shown = _absences(rng, steps, 0.25)
    behind, front = [], []

    bg_heat, bg_shift = (float(rng.uniform(0.12, 0.3)), 0.25), None
    if modality == "rgbt":
        if rng.random() < 0.6:  # thermal crossover: the background warms up to the target's temperature for a while
            gap = temp + 0.15 * _opaque_lum(patch) - bg_heat[0] - 0.25 * float(_lum(canvas).mean())
            weight = _window(rng, steps, (0.25, 0.45))
            bg_shift = weight * (gap + rng.uniform(0.0, 0.06))
            attrs["crossover_frames"] = [int(t) - 1 for t in np.flatnonzero(weight >= 1.0) if t > 0]
        if rng.random() < 0.6:  # hot distractor: as hot as the target, same silhouette, other appearance
            d_patch, _ = b.obj("objects", b.region("objects", avoid=t_index), shape)
            lum_gap = _opaque_lum(patch) - _opaque_lum(d_patch)  # same mean temperature
            d_heat = (temp + 0.15 * lum_gap + float(rng.uniform(-0.04, 0.04)), 0.15)
            behind.append(b.layer(d_patch, side * rng.uniform(0.85, 1.15), "hot_distractor", d_heat, -1.0))
    elif modality == "rgbd":
        for _ in range(int(rng.integers(1, 4)) if rng.random() < 0.8 else 0):  # near clutter, in front of the target
            c_patch, _ = b.obj("backgrounds", b.region("backgrounds"))
            depth = float(rng.uniform(500, target.depth - 400))
            front.append(b.layer(c_patch, side * rng.uniform(0.6, 1.3), "clutter", (0.3, 0.2), depth,
                                 moving=bool(rng.random() < 0.5)))
        if rng.random() < 0.5:  # another object at the target's depth: only appearance separates them
            d_patch, _ = b.obj("objects", b.region("objects", avoid=t_index))
            d_depth = target.depth + float(rng.uniform(-150, 150))
            behind.append(b.layer(d_patch, side * rng.uniform(0.85, 1.15), "distractor", (0.22, 0.22), d_depth))
    elif rng.random() < 0.5:  # rgbe, rgb: a moving distractor of another appearance
        d_patch, _ = b.obj("objects", b.region("objects", avoid=t_index))
        behind.append(b.layer(d_patch, side * rng.uniform(0.85, 1.15), "distractor", (0.22, 0.22), -1.0))
    if rng.random() < 0.3:  # look-alike of the target (mirrored, re-tinted); static in RGB-E (no events of its own)
        look = np.concatenate([patch[:, ::-1, :3] * rng.uniform(0.9, 1.1, 3).astype(np.float32), patch[:, ::-1, 3:]], 2)
        behind.append(b.layer(np.clip(look, 0, 1), side * rng.uniform(0.85, 1.15), "lookalike", (0.22, 0.22), -1.0,
                              moving=modality != "rgbe"))
    attrs["roles"] = sorted({layer.role for layer in behind + front})
    if modality == "rgbd":
        attrs["depth_mm"] = {layer.role: round(layer.depth) for layer in [target] + behind if layer.depth > 0}
        attrs["depth_mm"]["clutter"] = [round(layer.depth) for layer in front]
    pole = _pole(rng, target.centres, target.size, offsets) if rng.random() < 0.3 else None
    pole_tex = canvas[:, int(rng.integers(0, cw - 8)) :][:, :8].mean(axis=1, keepdims=True) * 0.6

    attrs["dark"] = bool(rng.random() < profile["dark"])
    gain = 1.0
    if attrs["dark"]:
        gain = float(rng.uniform(0.3, 0.6)) if modality == "rgb" else float(rng.uniform(0.05, 0.14))
    noise = 8.0 if attrs["dark"] and modality == "rgbe" else 6.0 if attrs["dark"] else 1.5
    scene = _Scene(canvas, offsets, behind + [target] + front, _bg_depth(canvas), pole, pole_tex, gain, noise,
                   bg_heat, bg_shift)
    return scene, b.record


def _v2_key(seed: int, modality: str, split: str, index: int, stream: int) -> list[int]:
    """RNG key of one stream of one v2 sequence: every modality, split and sequence has its own scenes."""
    return [int(seed), 2, list(DEMO_LAYOUTS).index(modality), _V2_POOLS.index(split), int(index), stream]


def _render_v2(
    seed: int, modality: str, split: str, index: int, frames: int, image_size: tuple[int, int]
) -> tuple[Iterator[_Frame], dict[str, Any]]:
    """Frames (frame ``-1`` first, for the events) and manifest record of one version-2 sequence."""
    scene, record = _v2_scene(seed, modality, split, index, frames + 1, image_size)
    width, height = image_size
    rng = np.random.default_rng(_v2_key(seed, modality, split, index, 8))
    thermal = np.random.default_rng(_v2_key(seed, modality, split, index, 9)) if modality == "rgbt" else None
    depth = np.random.default_rng(_v2_key(seed, modality, split, index, 10)) if modality == "rgbd" else None
    return _render_frames(scene, width, height, rng, thermal, depth), record


# ----------------------------------------------------------------------------------------------------------------------
# Writing the layouts
# ----------------------------------------------------------------------------------------------------------------------
class _Writer:
    """Writes files and records their SHA-256 for the content hash."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.digests: dict[str, str] = {}

    def write(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.digests[rel] = hashlib.sha256(data).hexdigest()

    def image(self, rel: str, array: np.ndarray, fmt: str) -> None:
        buf = io.BytesIO()
        options = {"quality": 92} if fmt == "JPEG" else {"compress_level": 3} if fmt == "PNG" else {}
        Image.fromarray(array).save(buf, format=fmt, **options)
        self.write(rel, buf.getvalue())

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for rel in sorted(self.digests):
            h.update(f"{rel}:{self.digests[rel]}\n".encode())
        return h.hexdigest()


def _box_line(box: tuple[int, int, int, int] | None, absent: str) -> str:
    return absent if box is None else ",".join(str(int(v)) for v in box)


def _write_sequence(writer: _Writer, cfg: DemoConfig, split: str, index: int) -> tuple[str, dict[str, Any] | None]:
    """Render and write one sequence; return its name and (v2) its manifest record.

    Version 2 writes VisEvent's frames as JPEG (RGB) and PNG (events) instead of BMP, to stay small on disk; the
    VisEvent loader reads any image type.
    """
    name = f"{cfg.modality}_{split}_{index:03d}"
    base = f"{split}/{name}"
    boxes: list[tuple[int, int, int, int] | None] = []
    prev_lum = None
    record, noise_rate, vis, ev = None, 0.002, ("bmp", "BMP"), ("bmp", "BMP")
    if cfg.version == 1:
        ev_rng = np.random.default_rng([int(cfg.seed), _SPLITS.index(split), int(index), 11])
        channels = {"rgbt": ("thermal",), "rgbd": ("depth",)}.get(cfg.modality, ())
        scene = render_sequence(cfg.seed, split, index, cfg.frames, cfg.image_size, channels)
    else:
        ev_rng = np.random.default_rng(_v2_key(cfg.seed, cfg.modality, split, index, 11))
        scene, record = _render_v2(cfg.seed, cfg.modality, split, index, cfg.frames, cfg.image_size)
        noise_rate, vis, ev = (0.006 if record["attributes"]["dark"] else 0.002), ("jpg", "JPEG"), ("png", "PNG")
    for t, frame in enumerate(scene, start=-1):
        if t < 0:
            prev_lum = frame.lum
            continue
        boxes.append(frame.box)
        if cfg.modality == "rgbt":
            writer.image(f"{base}/visible/v{t:06d}.jpg", frame.rgb, "JPEG")
            writer.image(f"{base}/infrared/i{t:06d}.jpg", np.repeat(frame.thermal[..., None], 3, axis=2), "JPEG")
        elif cfg.modality == "rgbd":
            writer.image(f"{base}/color/{t + 1:08d}.jpg", frame.rgb, "JPEG")
            writer.image(f"{base}/depth/{t + 1:08d}.png", frame.depth, "PNG")
        elif cfg.modality == "rgbe":
            writer.image(f"{base}/vis_imgs/frame{t:04d}.{vis[0]}", frame.rgb, vis[1])
            writer.image(f"{base}/event_imgs/frame{t:04d}.{ev[0]}", _events(prev_lum, frame.lum, ev_rng, noise_rate), ev[1])
        else:
            writer.image(f"{base}/img/{t + 1:04d}.jpg", frame.rgb, "JPEG")
        prev_lum = frame.lum
    if cfg.modality == "rgbt":  # LasHeR: comma-separated, CRLF, absent = 0,0,0,0
        text = "".join(_box_line(b, "0,0,0,0") + "\r\n" for b in boxes).encode()
        for gt_name in ("visible.txt", "infrared.txt", "init.txt"):
            writer.write(f"{base}/{gt_name}", text)
    elif cfg.modality == "rgbd":  # DepthTrack / VOT: absent = nan row
        writer.write(f"{base}/groundtruth.txt", "".join(_box_line(b, "nan,nan,nan,nan") + "\n" for b in boxes).encode())
    elif cfg.modality == "rgbe":  # VisEvent: absent_label 1 = present, 0 = absent
        writer.write(f"{base}/groundtruth.txt", "".join(_box_line(b, "0,0,0,0") + "\n" for b in boxes).encode())
        writer.write(f"{base}/absent_label.txt", "".join(("0" if b is None else "1") + "\n" for b in boxes).encode())
    else:
        writer.write(f"{base}/groundtruth.txt", "".join(_box_line(b, "0,0,0,0") + "\n" for b in boxes).encode())
    return name, record


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "MANIFEST.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def make_demo_dataset(
    root: str | Path | None = None,
    modality: str = "rgbt",
    num_train: int | None = None,
    num_test: int | None = None,
    frames: int | None = None,
    image_size: tuple[int, int] | None = None,
    seed: int = 0,
    force: bool = False,
    *,
    version: int = GENERATOR_VERSION,
    num_val: int | None = None,
    num_pretrain: int | None = None,
    num_retention: int | None = None,
) -> Path:
    """Build (or reuse) a demo set and return its root, which holds one folder per split and ``MANIFEST.json``.

    Version 1 (the default) writes ``train/`` and ``test/``; version 2 writes ``train/``, ``val/``, ``test/`` (RGB-X)
    or ``pretrain/``, ``val/``, ``retention/`` (RGB) from disjoint source pools (see :class:`DemoConfig`). Sizes left
    ``None`` take the version's defaults. The set is rebuilt only if ``MANIFEST.json`` is missing, its parameters or
    generator version differ, or ``force``; otherwise nothing is written. ``root`` defaults to
    :func:`demo_set_root` (``default_demo_root() / modality``, for v2 ``default_demo_root() / "v2" / modality``).

    Raises:
        ValueError: a parameter is invalid (the message names it and its value); nothing is written.
        FileExistsError: ``root`` already holds split folders that this generator did not write.

    Example:
        >>> root = make_demo_dataset("/tmp/demo_rgbd", modality="rgbd", num_train=2, num_test=1)  # doctest: +SKIP
        >>> json.loads((root / "MANIFEST.json").read_text())["content_hash"]  # doctest: +SKIP
        >>> v2 = make_demo_dataset("/tmp/demo_v2_rgbt", modality="rgbt", version=2)  # doctest: +SKIP
    """
    cfg = DemoConfig(modality=modality, num_train=num_train, num_test=num_test, frames=frames, image_size=image_size,
                     seed=seed, version=version, num_val=num_val, num_pretrain=num_pretrain,
                     num_retention=num_retention)
    root = Path(root).expanduser() if root is not None else demo_set_root(modality, cfg.version)
    params = cfg.params()
    with file_lock(root.parent / f".{root.name}.lock"):
        manifest = _read_manifest(root)
        fresh = (
            manifest is not None
            and manifest.get("generator_version") == cfg.version
            and manifest.get("params") == params
            and all((root / s).is_dir() for s in cfg.splits)
        )
        if fresh and not force:
            return root
        if manifest is None and any((root / s).exists() for s in cfg.splits):
            raise FileExistsError(
                f"{root} holds {' or '.join(s + '/' for s in cfg.splits)} but no MANIFEST.json; refusing to overwrite "
                "data the demo generator did not write"
            )
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            writer = _Writer(tmp)
            written = {split: [_write_sequence(writer, cfg, split, i) for i in range(n)]
                       for split, n in cfg.split_sizes.items()}
            for split in cfg.splits:
                (tmp / split).mkdir(exist_ok=True)
            new_manifest = {
                "generator_version": cfg.version,
                "params": params,
                "layout": DEMO_LAYOUTS[cfg.modality],
                "content_hash": writer.content_hash(),
                "num_files": len(writer.digests),
                "sequences": {split: [name for name, _ in seqs] for split, seqs in written.items()},
                "sources": [
                    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                    "matplotlib/mpl-data/sample_data/jacksboro_fault_dem.npz",
                ],
            }
            if cfg.version == 2:
                new_manifest.update(_v2_manifest(cfg, written))
            old = manifest.get("sequences", {}) if manifest is not None else {}
            (root / "MANIFEST.json").unlink(missing_ok=True)
            for split in sorted(set(cfg.splits) | (set(old) & set(_SPLITS + _V2_POOLS))):
                if (root / split).exists():  # the new splits, and the old set's ones it does not have
                    shutil.rmtree(root / split)
                if split in cfg.splits:
                    os.replace(tmp / split, root / split)
            (root / "MANIFEST.json").write_text(json.dumps(new_manifest, indent=2, sort_keys=True) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _v2_manifest(cfg: DemoConfig, written: dict[str, list[tuple[str, dict[str, Any] | None]]]) -> dict[str, Any]:
    """Version-2 manifest entries: split sizes, the pool of every split and each scene's source crops."""
    pools = _v2_pools()
    return {
        "split_sizes": cfg.split_sizes,
        "split_pools": {split: split for split in cfg.splits},
        "pools": {pool: {kind: [list(r) for r in regions] for kind, regions in pools[pool].items()} for pool in pools},
        "scenes": {name: record for seqs in written.values() for name, record in seqs},
        "sources": [f"matplotlib/mpl-data/sample_data/{file}" for file, _, _ in _V2_SOURCES.values()],
    }


def load_demo_dataset(
    modality: str = "rgbt", split: str = "train", root: str | Path | None = None, **params: Any
) -> list[Sequence]:
    """Build the demo set if needed (``params`` as :func:`make_demo_dataset`) and load ``split`` with the real
    loader of its layout (LasHeR, DepthTrack, VisEvent or plain RGB).

    Example:
        >>> seqs = load_demo_dataset("rgbe", "test")  # doctest: +SKIP
        >>> val = load_demo_dataset("rgbt", "val", version=2)  # doctest: +SKIP
    """
    splits = DemoConfig(modality=modality, **{k: v for k, v in params.items() if k != "force"}).splits
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, got {split!r}")
    path = make_demo_dataset(root, modality=modality, **params)
    return load_dataset(DEMO_LAYOUTS[modality], path / split)
