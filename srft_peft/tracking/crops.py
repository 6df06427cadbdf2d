"""Square crops around a box, their inverse mapping, and ImageNet normalisation (shared by training and inference).

Geometry: for a reference box (x, y, w, h) and factor f, the crop is the square of side
``s = ceil(sqrt(w·h)·f)`` whose top-left corner is ``x0 = floor(x + w/2 - s/2 + 0.5)`` (same for y), resized to
``output_size``; ``resize_factor = output_size / s``. A point u in the image maps to ``(u - x0)·resize_factor`` in the
crop, and :func:`map_box_back` applies the exact inverse. Pixels outside the image are padded (zeros by default).

Example:
    >>> import numpy as np
    >>> img = np.full((100, 100, 3), 200, np.uint8)
    >>> crop, r = sample_target(img, (0, 0, 10, 10), 2.0, 40)
    >>> crop.shape, r
    ((40, 40, 3), 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "box_to_crop",
    "clip_box",
    "crop_window",
    "map_box_back",
    "normalize_image",
    "sample_target",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR


def _as_box(box_xywh: Sequence[float] | np.ndarray | torch.Tensor, name: str = "box_xywh") -> np.ndarray:
    if isinstance(box_xywh, torch.Tensor):
        box_xywh = box_xywh.detach().cpu().numpy()
    box = np.asarray(box_xywh, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"{name} must be 4 finite numbers x, y, w, h, got {box_xywh!r}")
    return box


def crop_window(box_xywh: Sequence[float] | np.ndarray, search_area_factor: float) -> tuple[int, int, int]:
    """Top-left corner and side ``(x0, y0, side)`` in image pixels of the square crop around ``box_xywh``."""
    x, y, w, h = _as_box(box_xywh)
    if w <= 0 or h <= 0:
        raise ValueError(f"box_xywh must have positive width and height, got {box_xywh!r}")
    if not search_area_factor > 0:
        raise ValueError(f"search_area_factor must be > 0, got {search_area_factor!r}")
    side = math.ceil(math.sqrt(w * h) * search_area_factor)
    if side < 1:
        raise ValueError(f"crop around {box_xywh!r} with factor {search_area_factor} is smaller than one pixel")
    x0 = math.floor(x + 0.5 * w - 0.5 * side + 0.5)
    y0 = math.floor(y + 0.5 * h - 0.5 * side + 0.5)
    return x0, y0, side


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 array to (size, size, C) with PIL (any channel count)."""
    if img.shape[0] == size and img.shape[1] == size:
        return img.copy()
    c = img.shape[2]
    if c % 3 == 0:
        parts = [
            np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, i : i + 3])).resize((size, size), _BILINEAR))
            for i in range(0, c, 3)
        ]
    else:
        parts = [
            np.asarray(Image.fromarray(np.ascontiguousarray(img[:, :, i])).resize((size, size), _BILINEAR))[..., None]
            for i in range(c)
        ]
    return np.concatenate(parts, axis=2)


def sample_target(
    image: np.ndarray,
    box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    *,
    pad: str = "zeros",
) -> tuple[np.ndarray, float]:
    """Crop a square of side ``ceil(sqrt(w·h)·factor)`` centred on the box, pad outside the image, resize.

    Args:
        image: (H, W, C) uint8 (C = 3 for RGB, 6 for RGB + X stacked on the channel axis).
        box_xywh: reference box x, y, w, h (top-left, pixels).
        search_area_factor: crop side / sqrt(box area) (2 for templates, 4 for search regions in OSTrack).
        output_size: side of the returned crop.
        pad: ``"zeros"`` or ``"mean"`` (per-channel image mean) for pixels outside the image.

    Returns:
        ``(crop (output_size, output_size, C) uint8, resize_factor = output_size / side)``.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be an (H, W, C) uint8 numpy array, got {type(image).__name__} {shape}")
    if not isinstance(output_size, (int, np.integer)) or output_size <= 0:
        raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    if pad not in ("zeros", "mean"):
        raise ValueError(f"pad must be 'zeros' or 'mean', got {pad!r}")
    x0, y0, side = crop_window(box_xywh, search_area_factor)
    h_img, w_img, c = image.shape
    fill = np.zeros(c, np.uint8) if pad == "zeros" else np.round(image.reshape(-1, c).mean(0)).astype(np.uint8)
    canvas = np.empty((side, side, c), np.uint8)
    canvas[...] = fill
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + side, w_img), min(y0 + side, h_img)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = image[iy0:iy1, ix0:ix1]
    return _resize_uint8(canvas, int(output_size)), float(output_size) / side


def box_to_crop(
    box_xywh: Sequence[float] | np.ndarray,
    crop_ref_box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
    normalize: bool = False,
) -> np.ndarray:
    """Map an image box into the crop made by ``sample_target(image, crop_ref_box_xywh, factor, output_size)``.

    Returns x, y, w, h in crop pixels, or divided by ``output_size`` (values in [0, 1] when inside) if ``normalize``.
    """
    box = _as_box(box_xywh)
    x0, y0, side = crop_window(crop_ref_box_xywh, search_area_factor)
    r = output_size / side
    out = np.array([(box[0] - x0) * r, (box[1] - y0) * r, box[2] * r, box[3] * r])
    return out / output_size if normalize else out


def map_box_back(
    box_crop_xywh: Sequence[float] | np.ndarray,
    crop_ref_box_xywh: Sequence[float] | np.ndarray,
    search_area_factor: float,
    output_size: int,
) -> np.ndarray:
    """Exact inverse of :func:`box_to_crop`: crop-pixel x, y, w, h -> image x, y, w, h (float64, shape (4,))."""
    box = _as_box(box_crop_xywh, "box_crop_xywh")
    x0, y0, side = crop_window(crop_ref_box_xywh, search_area_factor)
    inv = side / output_size
    return np.array([x0 + box[0] * inv, y0 + box[1] * inv, box[2] * inv, box[3] * inv])


def clip_box(box_xywh: Sequence[float] | np.ndarray, height: int, width: int, margin: float = 10) -> np.ndarray:
    """Clip x, y, w, h to the image so that at least ``margin`` pixels of it stay inside (OSTrack's rule).

    x1 ∈ [0, W - margin], x2 ∈ [margin, W], w = max(margin, x2 - x1) (same for y).
    """
    x, y, w, h = _as_box(box_xywh)
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
