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

Example:
    >>> from srft_peft.tracking.demo_data import make_demo_dataset, load_demo_dataset
    >>> root = make_demo_dataset(modality="rgbt")  # ~/.cache/srft_peft/demo/rgbt  # doctest: +SKIP
    >>> train = load_demo_dataset("rgbt", "train")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from .datasets import Sequence, load_dataset

__all__ = [
    "DEMO_LAYOUTS",
    "GENERATOR_VERSION",
    "DemoConfig",
    "default_demo_root",
    "make_demo_dataset",
    "load_demo_dataset",
    "render_sequence",
]

GENERATOR_VERSION = 1
DEMO_LAYOUTS = {"rgbt": "lasher", "rgbd": "depthtrack", "rgbe": "visevent", "rgb": "rgb"}
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


@dataclass
class DemoConfig:
    """Parameters of a demo set (all of them go into ``MANIFEST.json``)."""

    modality: str = field(default="rgbt", metadata={"help": "'rgbt', 'rgbd', 'rgbe' or 'rgb'."})
    num_train: int = field(default=8, metadata={"help": "Number of training sequences."})
    num_test: int = field(default=4, metadata={"help": "Number of test sequences."})
    frames: int = field(default=48, metadata={"help": "Frames per sequence."})
    image_size: tuple[int, int] = field(default=(160, 120), metadata={"help": "Frame size (width, height)."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed gives byte-identical files."})

    def __post_init__(self) -> None:
        if self.modality not in DEMO_LAYOUTS:
            raise ValueError(f"DemoConfig.modality must be one of {sorted(DEMO_LAYOUTS)}, got {self.modality!r}")
        for name in ("num_train", "num_test"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"DemoConfig.{name} must be a non-negative integer, got {value!r}")
        if not isinstance(self.frames, (int, np.integer)) or self.frames < 2:
            raise ValueError(f"DemoConfig.frames must be an integer >= 2, got {self.frames!r}")
        size = tuple(int(v) for v in self.image_size)
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"DemoConfig.image_size must be (width, height) with both >= 32, got {self.image_size!r}")
        self.image_size = size


def default_demo_root() -> Path:
    """``$SRFT_DEMO_ROOT`` if set, else ``~/.cache/srft_peft/demo``."""
    env = os.environ.get("SRFT_DEMO_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srft_peft" / "demo"


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
    heat: tuple[float, float]  # thermal = heat[0] + heat_shift[t] + heat[1] * luminance
    depth: float  # millimetres; <= 0: the layer does not show in depth
    role: str = "target"
    heat_shift: np.ndarray | None = None  # (T,) per-frame temperature change (v2)
    blur: np.ndarray | None = None  # (T,) int: sub-frame positions averaged for motion blur (v2); None = 1
    _cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def resized(self, w: int, h: int) -> np.ndarray:
        """The appearance (and mask) at ``w x h`` pixels, cached since scales repeat."""
        if (w, h) not in self._cache:
            self._cache[(w, h)] = _resize(self.patch, w, h)
        return self._cache[(w, h)]

    def heat_at(self, t: int) -> float:
        return self.heat[0] if self.heat_shift is None else self.heat[0] + float(self.heat_shift[t])


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


def _placement(layer: _Layer, t: float, width: int, height: int, centre: np.ndarray | None = None) -> tuple[int, ...]:
    """Box ``x, y, w, h`` of ``layer`` in frame ``t`` (at ``centre`` if given), clipped into the frame."""
    t = int(t)
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
    """Draw ``layer`` into ``view`` (averaged over sub-frame positions where it is motion-blurred); return its box."""
    box = _placement(layer, t, width, height)
    n = 1 if layer.blur is None or t == 0 else int(layer.blur[t])
    shots = [box] if n <= 1 else [
        _placement(layer, t, width, height, layer.centres[t - 1] + (layer.centres[t] - layer.centres[t - 1]) * k / (n - 1))
        for k in range(n)
    ]
    base = view.copy() if n > 1 else view
    acc = np.zeros_like(view) if n > 1 else view
    for x, y, w, h in shots:
        p = layer.resized(w, h)
        target = base.copy() if n > 1 else view
        mask = p[..., 3:] if p.shape[2] == 4 else None
        _paste(target[y : y + h, x : x + w], p[..., :3], mask)
        if n > 1:
            acc += target / n
    if n > 1:
        view[...] = acc
    return box


def _render_frames(
    scene: _Scene,
    width: int,
    height: int,
    rng: np.random.Generator,
    rng_thermal: np.random.Generator | None,
    rng_depth: np.random.Generator | None,
    invalid_depth: float = 0.005,
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
                _paste(heat[y : y + h, x : x + w], layer.heat_at(t) + layer.heat[1] * lum_p, mask)
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
            depth = depth * (rng_depth.random(depth.shape, dtype=np.float32) > invalid_depth)  # invalid (0) pixels
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
    shown = np.ones(steps, bool)
    if rng.random() < 0.3 and frames >= 12:  # short absence
        a = int(rng.integers(max(frames // 4, 2), frames - 4)) + 1
        shown[a : a + int(rng.integers(3, 6))] = False
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


def _write_sequence(writer: _Writer, cfg: DemoConfig, split: str, index: int) -> str:
    name = f"{cfg.modality}_{split}_{index:03d}"
    base = f"{split}/{name}"
    ev_rng = np.random.default_rng([int(cfg.seed), _SPLITS.index(split), int(index), 11])
    boxes: list[tuple[int, int, int, int] | None] = []
    prev_lum = None
    channels = {"rgbt": ("thermal",), "rgbd": ("depth",)}.get(cfg.modality, ())
    scene = render_sequence(cfg.seed, split, index, cfg.frames, cfg.image_size, channels)
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
            writer.image(f"{base}/vis_imgs/frame{t:04d}.bmp", frame.rgb, "BMP")
            writer.image(f"{base}/event_imgs/frame{t:04d}.bmp", _events(prev_lum, frame.lum, ev_rng), "BMP")
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
    return name


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Inter-process lock (POSIX ``flock``; a no-op where unavailable) so that concurrent ranks build once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_manifest(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "MANIFEST.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def make_demo_dataset(
    root: str | Path | None = None,
    modality: str = "rgbt",
    num_train: int = 8,
    num_test: int = 4,
    frames: int = 48,
    image_size: tuple[int, int] = (160, 120),
    seed: int = 0,
    force: bool = False,
) -> Path:
    """Build (or reuse) a demo set and return its root, which holds ``train/``, ``test/`` and ``MANIFEST.json``.

    The set is rebuilt only if ``MANIFEST.json`` is missing, its parameters or generator version differ, or
    ``force``; otherwise nothing is written. ``root`` defaults to ``default_demo_root() / modality``.

    Raises:
        FileExistsError: ``root`` already holds ``train/`` or ``test/`` that this generator did not write.

    Example:
        >>> root = make_demo_dataset("/tmp/demo_rgbd", modality="rgbd", num_train=2, num_test=1)  # doctest: +SKIP
        >>> json.loads((root / "MANIFEST.json").read_text())["content_hash"]  # doctest: +SKIP
    """
    cfg = DemoConfig(modality, num_train, num_test, frames, tuple(image_size), seed)
    root = Path(root).expanduser() if root is not None else default_demo_root() / modality
    params = {**asdict(cfg), "image_size": list(cfg.image_size)}
    with _lock(root.parent / f".{root.name}.lock"):
        manifest = _read_manifest(root)
        fresh = (
            manifest is not None
            and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("params") == params
            and all((root / s).is_dir() for s in _SPLITS)
        )
        if fresh and not force:
            return root
        if manifest is None and any((root / s).exists() for s in _SPLITS):
            raise FileExistsError(
                f"{root} holds train/ or test/ but no MANIFEST.json; refusing to overwrite data the demo generator "
                "did not write"
            )
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            writer = _Writer(tmp)
            names = {
                split: [_write_sequence(writer, cfg, split, i) for i in range(n)]
                for split, n in (("train", cfg.num_train), ("test", cfg.num_test))
            }
            for split in _SPLITS:
                (tmp / split).mkdir(exist_ok=True)
            new_manifest = {
                "generator_version": GENERATOR_VERSION,
                "params": params,
                "layout": DEMO_LAYOUTS[cfg.modality],
                "content_hash": writer.content_hash(),
                "num_files": len(writer.digests),
                "sequences": names,
                "sources": [
                    "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
                    "matplotlib/mpl-data/sample_data/jacksboro_fault_dem.npz",
                ],
            }
            (root / "MANIFEST.json").unlink(missing_ok=True)
            for split in _SPLITS:
                if (root / split).exists():
                    shutil.rmtree(root / split)
                os.replace(tmp / split, root / split)
            (root / "MANIFEST.json").write_text(json.dumps(new_manifest, indent=2, sort_keys=True) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_demo_dataset(
    modality: str = "rgbt", split: str = "train", root: str | Path | None = None, **params: Any
) -> list[Sequence]:
    """Build the demo set if needed (``params`` as :func:`make_demo_dataset`) and load ``split`` with the real
    loader of its layout (LasHeR, DepthTrack, VisEvent or plain RGB).

    Example:
        >>> seqs = load_demo_dataset("rgbe", "test")  # doctest: +SKIP
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    path = make_demo_dataset(root, modality=modality, **params)
    return load_dataset(DEMO_LAYOUTS[modality], path / split)
