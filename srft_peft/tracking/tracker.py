"""One-pass-evaluation tracker around :class:`~srft_peft.tracking.model.OSTrackRGBX` (OSTrack inference rules).

Example:
    >>> import numpy as np, torch
    >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig, Tracker
    >>> model = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    >>> frames = [np.zeros((120, 160, 3), np.uint8) for _ in range(3)]
    >>> boxes, scores = Tracker(model).run_sequence(frames, (40, 30, 20, 20))
    >>> boxes.shape, scores.shape
    ((3, 4), (3,))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from .crops import as_box, box_from_window, clip_box, crop_tensor
from .model import decode_center_maps

__all__ = ["Tracker", "hann2d"]


def hann2d(size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(1, 1, size, size) outer product of the "centred" Hann window 0.5·(1 − cos(2πk/(size+1))), k = 1..size.

    No zeros on the border (OSTrack's ``hann2d(..., centered=True)``).
    """
    k = torch.arange(1, size + 1, dtype=torch.float32, device=device)
    w = 0.5 * (1 - torch.cos(2 * math.pi * k / (size + 1)))
    return (w.view(-1, 1) * w.view(1, -1)).view(1, 1, size, size)


class Tracker:
    """Template cropped once at :meth:`initialize`; :meth:`track` searches around the previous box.

    Crops are :func:`~srft_peft.tracking.crops.crop_tensor`, the function the training pairs
    (:class:`~srft_peft.tracking.sampling.TrackingPairDataset`) use: same sub-pixel window, resampling and normalisation.

    Args:
        model: an ``OSTrackRGBX`` (or any module with ``config.template_size``/``search_size`` (and optionally
            ``input_channels``, default (3, 6)) returning ``score_map``, ``size_map``, ``offset_map``).
        template_factor / search_factor: crop side / sqrt(box area) for template and search crops.
        window: multiply the score map by a Hann window before decoding.
        device: where the model runs (the model is moved there and put in eval mode).
        margin: pixels of the box kept inside the image when clipping (OSTrack: 10).

    Images are (H, W, C) uint8: C = 3 (RGB) or 6 (RGB then X, e.g. a colour-mapped depth or thermal image).
    """

    def __init__(
        self,
        model: nn.Module,
        template_factor: float = 2.0,
        search_factor: float = 4.0,
        window: bool = True,
        device: str | torch.device = "cpu",
        margin: float = 10,
    ) -> None:
        for name, value in (("template_factor", template_factor), ("search_factor", search_factor)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        cfg = model.config
        self.template_size = int(cfg.template_size)
        self.search_size = int(cfg.search_size)
        self.in_chans = tuple(getattr(cfg, "input_channels", (3, 6)))
        self.template_factor = float(template_factor)
        self.search_factor = float(search_factor)
        self.use_window = bool(window)
        self.margin = margin
        self.window: torch.Tensor | None = None
        self.template: torch.Tensor | None = None
        self.state: np.ndarray | None = None

    def _check_image(self, image: np.ndarray) -> None:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an (H, W, C) uint8 array, got {getattr(image, 'shape', type(image))}")
        if image.shape[2] not in self.in_chans:
            raise ValueError(f"image must have {' or '.join(map(str, self.in_chans))} channels, got {image.shape[2]}")

    def initialize(self, image: np.ndarray, box_xywh: Sequence[float] | np.ndarray) -> None:
        """Crop and store the template around the first-frame box (x, y, w, h, pixels)."""
        self._check_image(image)
        box = as_box(box_xywh)
        crop, _ = crop_tensor(image, box, self.template_factor, self.template_size)
        self.template = crop.unsqueeze(0).to(self.device)
        self.state = box

    @torch.no_grad()
    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Track one frame -> (box x, y, w, h float64 shape (4,), confidence = max of the windowed score map)."""
        if self.template is None or self.state is None:
            raise RuntimeError("call initialize(image, box) before track(image)")
        self._check_image(image)
        crop, window = crop_tensor(image, self.state, self.search_factor, self.search_size)
        search = crop.unsqueeze(0).to(self.device)
        out = self.model(self.template, search)
        score = out["score_map"].float()
        if self.use_window:
            if self.window is None or self.window.shape[-1] != score.shape[-1]:
                self.window = hann2d(score.shape[-1], device=score.device)
            score = score * self.window
        confidence = float(score.max())
        box_norm = decode_center_maps(score, out["size_map"].float(), out["offset_map"].float())[0]
        cx, cy, w, h = (box_norm * self.search_size).tolist()
        box_crop = np.array([cx - 0.5 * w, cy - 0.5 * h, w, h])
        box = box_from_window(box_crop, window, self.search_size)
        box = clip_box(box, image.shape[0], image.shape[1], margin=self.margin)
        self.state = box
        return box.copy(), confidence

    def run_sequence(
        self, frames: Iterable[np.ndarray], init_box_xywh: Sequence[float] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One-pass evaluation: frame 0 gets ``init_box_xywh`` (confidence 1), others are tracked.

        Returns ``(boxes (N, 4) float64 x, y, w, h, confidences (N,) float64)``.
        """
        boxes: list[np.ndarray] = []
        scores: list[float] = []
        for i, frame in enumerate(frames):
            if i == 0:
                self.initialize(frame, init_box_xywh)
                boxes.append(as_box(init_box_xywh))
                scores.append(1.0)
            else:
                box, conf = self.track(frame)
                boxes.append(box)
                scores.append(conf)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)
