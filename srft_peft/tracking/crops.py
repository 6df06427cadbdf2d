"""Square crops around a box, their inverse mapping, and ImageNet normalisation: the one implementation that training
(:class:`~srft_peft.tracking.sampling.TrackingPairDataset`) and inference (:class:`~srft_peft.tracking.tracker.Tracker`)
share, so that a model sees the same geometry and the same resampling in both.

Coordinates are continuous pixel coordinates: pixel ``i`` covers ``[i, i + 1)``, a box ``x, y, w, h`` covers
``[x, x + w) × [y, y + h)`` and has its centre at ``(x + w/2, y + h/2)``.

Windows. For a reference box and factor f the crop is a square *window* ``(x0, y0, side)`` of the image:

* ``exact=True`` (the model crops: training pairs and the Tracker): ``side = sqrt(w·h)·f`` and the window is centred
  on the box, ``x0 = x + w/2 - side/2`` — sub-pixel, no rounding;
* ``exact=False`` (OSTrack's integer rule, the default of the pixel-level helpers): ``side = ceil(sqrt(w·h)·f)``,
  ``x0 = floor(x + w/2 - side/2 + 0.5)``.

Resampling (:func:`crop_and_resize`, used by every crop): output pixel ``u`` of an ``S``-pixel crop samples the image
bilinearly at ``x0 + (u + 0.5)·side/S`` (pixel centres, i.e. OpenCV ``INTER_LINEAR`` / ``align_corners=False``; no
anti-aliasing, as in OSTrack's ``cv2.resize``); outside the image the value is 0 (or the image mean). A point ``p`` of
the image maps to ``(p - x0)·S/side`` in the crop and :func:`map_box_back` / :func:`box_from_window` apply the exact
inverse.

Example:
    >>> import numpy as np
    >>> img = np.full((100, 100, 3), 200, np.uint8)
    >>> crop, r = sample_target(img, (0, 0, 10, 10), 2.0, 40)
    >>> crop.shape, r
    ((40, 40, 3), 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "as_box",
    "box_from_window",
    "box_in_window",
    "box_to_crop",
    "clip_box",
    "crop_and_resize",
    "crop_tensor",
    "crop_window",
    "map_box_back",
    "normalize_image",
    "sample_target",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PADS = ("zeros", "mean")

Window = tuple[float, float, float]
Images = np.ndarray | Sequence[np.ndarray]  # one (H, W, C) uint8 image, or several of one size cropped alike


def as_box(box_xywh: Sequence[float] | np.ndarray | torch.Tensor, name: str = "box_xywh") -> np.ndarray:
    """``box_xywh`` (a sequence, array or tensor) as 4 float64 numbers; anything else is a ``ValueError`` naming
    ``name``."""
    if isinstance(box_xywh, torch.Tensor):
        box_xywh = box_xywh.detach().cpu().numpy()
    box = np.asarray(box_xywh, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"{name} must be 4 finite numbers x, y, w, h, got {box_xywh!r}")
    return box


def crop_window(
    box_xywh: Sequence[float] | np.ndarray, search_area_factor: float, exact: bool = False
) -> tuple[float, float, float]:
    """Top-left corner and side ``(x0, y0, side)`` in image pixels of the square crop around ``box_xywh``.

    ``exact=False``: OSTrack's integer window (``int`` values); ``exact=True``: the sub-pixel window centred on the box
    (``float`` values). See the module docstring.

    Example:
        >>> crop_window((40, 40, 20, 20), 2.0), crop_window((40.5, 40, 20, 20), 2.0, exact=True)
        ((30, 30, 40), (30.5, 30.0, 40.0))
    """
    x, y, w, h = as_box(box_xywh)
    if w <= 0 or h <= 0:
        raise ValueError(f"box_xywh must have positive width and height, got {box_xywh!r}")
    if not search_area_factor > 0:
        raise ValueError(f"search_area_factor must be > 0, got {search_area_factor!r}")
    if exact:
        side = math.sqrt(w * h) * float(search_area_factor)
        return float(x + 0.5 * w - 0.5 * side), float(y + 0.5 * h - 0.5 * side), float(side)
    side = math.ceil(math.sqrt(w * h) * search_area_factor)
    if side < 1:
        raise ValueError(f"crop around {box_xywh!r} with factor {search_area_factor} is smaller than one pixel")
    x0 = math.floor(x + 0.5 * w - 0.5 * side + 0.5)
    y0 = math.floor(y + 0.5 * h - 0.5 * side + 0.5)
    return x0, y0, side


def _check_window(window: Sequence[float]) -> tuple[float, float, float]:
    try:
        x0, y0, side = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be (x0, y0, side), got {window!r}") from None
    if not (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(side) and side > 0):
        raise ValueError(f"window must be finite with side > 0, got {window!r}")
    return x0, y0, side


def _as_images(image: Images) -> list[np.ndarray]:
    """One ``(H, W, C)`` uint8 image, or several of the same height and width, as a list (checked)."""
    images = [image] if isinstance(image, np.ndarray) else list(image) if isinstance(image, (list, tuple)) else [image]
    for im in images:
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.dtype != np.uint8:
            shape = getattr(im, "shape", None)
            raise ValueError(f"image must be an (H, W, C) uint8 numpy array (or a list of them), got "
                             f"{type(im).__name__} {shape}")
    if not images or any(im.shape[:2] != images[0].shape[:2] for im in images):
        raise ValueError(f"images cropped together must have the same height and width, got "
                         f"{[im.shape for im in images]}")
    return images


def crop_and_resize(
    image: Images, window: Sequence[float], output_size: int, pad: str = "zeros"
) -> torch.Tensor:
    """Bilinear crop of ``window = (x0, y0, side)`` (sub-pixel allowed) from an ``(H, W, C)`` uint8 image.

    Returns a ``(C, S, S)`` float32 tensor in [0, 255] (not rounded, not normalised). Output pixel ``u`` samples the
    image at the continuous position ``x0 + (u + 0.5)·side/S``; outside the image the value is 0 (``pad="zeros"``,
    OSTrack's zero padding) or the per-channel image mean (``pad="mean"``). Only the part of the image the window
    touches is converted.

    ``image`` may also be a list of images of one size (e.g. ``[rgb, x]`` from
    :meth:`~srft_peft.tracking.datasets.Sequence.load_images`): each is cropped with the same window and the channels
    are concatenated in order, the same values as cropping the images stacked on the channel axis, without copying
    the full frames into one array.

    Example:
        >>> crop_and_resize(np.full((8, 8, 6), 100, np.uint8), (2, 2, 4), 4).shape
        torch.Size([6, 4, 4])
    """
    images = _as_images(image)
    if isinstance(output_size, bool) or not isinstance(output_size, (int, np.integer)) or output_size <= 0:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    if pad not in _PADS:
        raise ValueError(f"pad must be one of {list(_PADS)}, got {pad!r}")
    x0, y0, side = _check_window(window)
    out_size = int(output_size)
    height, width = images[0].shape[:2]
    channels = sum(im.shape[2] for im in images)
    fill = None
    if pad == "mean":
        means = [im.reshape(-1, im.shape[2]).mean(0, dtype=np.float64) for im in images]
        fill = torch.from_numpy(np.concatenate(means)).float().view(-1, 1, 1)
    # The image region the window touches, plus a 1-pixel margin for the bilinear neighbours.
    ix0 = max(int(math.floor(x0)) - 1, 0)
    iy0 = max(int(math.floor(y0)) - 1, 0)
    ix1 = min(int(math.ceil(x0 + side)) + 1, width)
    iy1 = min(int(math.ceil(y0 + side)) + 1, height)
    if ix1 <= ix0 or iy1 <= iy0:  # the window lies entirely outside the image
        out = torch.zeros(channels, out_size, out_size, dtype=torch.float32)
        return out if fill is None else out + fill
    # Channel planes of the region only (a full-frame stack would copy every pixel of every image first). A
    # read-only array (PIL's) is copied first: torch warns on a tensor over memory it may not write.
    subs = [torch.from_numpy(region if region.flags.writeable else region.copy()).permute(2, 0, 1).float()
            for region in (im[iy0:iy1, ix0:ix1] for im in images)]
    sub = (subs[0] if len(subs) == 1 else torch.cat(subs))[None]
    if fill is not None:
        sub = sub - fill
    sub_h, sub_w = iy1 - iy0, ix1 - ix0
    pos = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (side / out_size)
    # align_corners=False: -1/+1 are the outer pixel edges; positions in float64, rounded once to float32
    gx = (((x0 - ix0) + pos) * (2.0 / sub_w) - 1.0).float()
    gy = (((y0 - iy0) + pos) * (2.0 / sub_h) - 1.0).float()
    grid = torch.stack((gx.expand(out_size, out_size), gy[:, None].expand(out_size, out_size)), dim=-1)[None]
    out = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out if fill is None else out + fill


def sample_target(
    image: Images,
    box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    *,
    pad: str = "zeros",
    exact: bool = False,
) -> tuple[np.ndarray, float]:
    """Crop the square window around the box (:func:`crop_window`), pad outside the image, resize; as uint8.

    Args:
        image: (H, W, C) uint8 (C = 3 for RGB, 6 for RGB + X stacked on the channel axis), or a list of images of
            one size cropped alike (see :func:`crop_and_resize`).
        box_xywh: reference box x, y, w, h (top-left, pixels).
        search_area_factor: crop side / sqrt(box area) (2 for templates, 4 for search regions in OSTrack).
        output_size: side of the returned crop.
        pad: ``"zeros"`` or ``"mean"`` (per-channel image mean) for pixels outside the image.
        exact: sub-pixel window instead of OSTrack's integer one.

    Returns:
        ``(crop (output_size, output_size, C) uint8, resize_factor = output_size / side)``; the pixels are
        :func:`crop_and_resize`'s, rounded.
    """
    window = crop_window(box_xywh, search_area_factor, exact=exact)
    crop = crop_and_resize(image, window, output_size, pad=pad)
    crop8 = crop.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(crop8), float(output_size) / window[2]


def crop_tensor(
    image: Images,
    box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    pad: str = "zeros",
    exact: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """The model input: the crop around the box, normalised with ``mean``/``std`` (repeated for every 3 channels).
    ``transform`` (training augmentation) maps the raw crop (C, S, S), values in 0..255, before the normalisation.

    Training pairs and the :class:`~srft_peft.tracking.tracker.Tracker` both call this, so they use the same window
    rule (sub-pixel by default), the same resampling and the same normalisation (no uint8 rounding in between).
    ``image`` is one ``(H, W, C)`` uint8 array or a list of them (``[rgb, x]``), see :func:`crop_and_resize`.

    Returns:
        ``(crop (C, S, S) float32, window (x0, y0, side))``; map boxes with :func:`box_in_window` /
        :func:`box_from_window` and this window.

    Example:
        >>> t, win = crop_tensor(np.zeros((50, 60, 6), np.uint8), (10, 10, 10, 10), 2.0, 16)
        >>> t.shape, win
        (torch.Size([6, 16, 16]), (5.0, 5.0, 20.0))
    """
    window = crop_window(box_xywh, search_area_factor, exact=exact)
    crop = crop_and_resize(image, window, output_size, pad=pad)
    if transform is not None:
        crop = transform(crop)
    reps, rem = divmod(crop.shape[0], 3)
    if rem or len(mean) != 3 or len(std) != 3:
        raise ValueError(f"crop_tensor needs a multiple of 3 channels and 3 mean/std values, got {crop.shape[0]} "
                         f"channels, mean {mean!r}, std {std!r}")
    m = torch.tensor(tuple(mean) * reps, dtype=torch.float32).view(-1, 1, 1) * 255.0
    s = torch.tensor(tuple(std) * reps, dtype=torch.float32).view(-1, 1, 1) * 255.0
    return crop.sub_(m).div_(s), window


def box_in_window(
    box_xywh: Sequence[float] | np.ndarray,
    window: Sequence[float],
    output_size: float | None = None,
    clip: bool = False,
) -> np.ndarray:
    """Image box -> the same box in the crop of ``window``: top-left x, y, w, h (float64, shape (4,)).

    Normalised by the crop side (values in [0, 1] when inside) when ``output_size`` is None, else in pixels of an
    ``output_size`` crop. ``clip`` keeps only the part of the box inside the crop.

    Example:
        >>> box_in_window((40, 40, 20, 20), (30, 30, 40)).tolist()
        [0.25, 0.25, 0.5, 0.5]
    """
    x, y, w, h = as_box(box_xywh)
    x0, y0, side = _check_window(window)
    if output_size is None:
        limit = 1.0
        out = np.array([(x - x0) / side, (y - y0) / side, w / side, h / side])
    else:
        limit = float(output_size)
        r = limit / side
        out = np.array([(x - x0) * r, (y - y0) * r, w * r, h * r])
    if clip:
        x1, y1 = np.clip(out[:2], 0.0, limit)
        x2, y2 = np.clip(out[:2] + out[2:], 0.0, limit)
        out = np.array([x1, y1, x2 - x1, y2 - y1])
    return out


def box_from_window(
    box_crop_xywh: Sequence[float] | np.ndarray, window: Sequence[float], output_size: float | None = None
) -> np.ndarray:
    """Exact inverse of :func:`box_in_window` (without clipping): crop box -> image x, y, w, h (float64, (4,))."""
    box = as_box(box_crop_xywh, "box_crop_xywh")
    x0, y0, side = _check_window(window)
    inv = side if output_size is None else side / float(output_size)
    return np.array([x0 + box[0] * inv, y0 + box[1] * inv, box[2] * inv, box[3] * inv])


def box_to_crop(
    box_xywh: Sequence[float] | np.ndarray,
    crop_ref_box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    normalize: bool = False,
    *,
    exact: bool = False,
    clip: bool = False,
) -> np.ndarray:
    """Map an image box into the crop made by ``sample_target(image, crop_ref_box_xywh, factor, output_size)``.

    Returns x, y, w, h in crop pixels, or divided by ``output_size`` (values in [0, 1] when inside) if ``normalize``.
    """
    window = crop_window(crop_ref_box_xywh, search_area_factor, exact=exact)
    out = box_in_window(box_xywh, window, output_size, clip=clip)
    return out / output_size if normalize else out


def map_box_back(
    box_crop_xywh: Sequence[float] | np.ndarray,
    crop_ref_box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    *,
    exact: bool = False,
) -> np.ndarray:
    """Exact inverse of :func:`box_to_crop`: crop-pixel x, y, w, h -> image x, y, w, h (float64, shape (4,))."""
    window = crop_window(crop_ref_box_xywh, search_area_factor, exact=exact)
    return box_from_window(box_crop_xywh, window, output_size)


def clip_box(box_xywh: Sequence[float] | np.ndarray, height: int, width: int, margin: float = 10) -> np.ndarray:
    """Clip x, y, w, h to the image so that at least ``margin`` pixels of it stay inside (OSTrack's rule).

    x1 ∈ [0, W - margin], x2 ∈ [margin, W], w = max(margin, x2 - x1) (same for y).
    """
    x, y, w, h = as_box(box_xywh)
    x1 = min(max(0.0, x), width - margin)
    x2 = min(max(margin, x + w), width)
    y1 = min(max(0.0, y), height - margin)
    y2 = min(max(margin, y + h), height)
    return np.array([x1, y1, max(margin, x2 - x1), max(margin, y2 - y1)])


def normalize_image(crop: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, C) -> float32 (C, H, W) (or NHWC -> NCHW), ImageNet mean/std repeated for every 3 channels.

    Example:
        >>> normalize_image(np.zeros((2, 2, 6), np.uint8)).shape
        torch.Size([6, 2, 2])
    """
    if not isinstance(crop, np.ndarray) or crop.ndim not in (3, 4) or crop.dtype != np.uint8:
        raise ValueError(f"crop must be an (H, W, C) or (N, H, W, C) uint8 array, got {getattr(crop, 'shape', crop)}")
    c = crop.shape[-1]
    if c % 3:
        raise ValueError(f"crop must have a multiple of 3 channels (RGB, RGB + X), got {c}")
    t = torch.from_numpy(np.ascontiguousarray(crop)).float().div_(255.0)
    reps = c // 3
    mean = torch.tensor(IMAGENET_MEAN * reps)
    std = torch.tensor(IMAGENET_STD * reps)
    t = (t - mean) / std
    return t.permute(2, 0, 1).contiguous() if t.ndim == 3 else t.permute(0, 3, 1, 2).contiguous()
