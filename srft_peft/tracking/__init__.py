"""Tracking models, losses, crops, inference tracker and checkpoint I/O for RGB-X fine-tuning."""

from .checkpoint_io import (
    CheckpointFormatError,
    LoadReport,
    load_rgb_checkpoint,
    load_tracker,
    read_weights_only,
    save_tracker,
)
from .crops import box_to_crop, clip_box, crop_window, map_box_back, normalize_image, sample_target
from .losses import focal_loss, gaussian_heatmap, gaussian_radius, generalized_box_iou, giou_loss, tracking_loss
from .model import (
    OSTrackRGBX,
    ParameterCount,
    TrackerConfig,
    TrackerOutput,
    build_rgbx_from_rgb,
    decode_center_maps,
)
from .tracker import Tracker, hann2d

__all__ = [
    "CheckpointFormatError",
    "LoadReport",
    "OSTrackRGBX",
    "ParameterCount",
    "Tracker",
    "TrackerConfig",
    "TrackerOutput",
    "box_to_crop",
    "build_rgbx_from_rgb",
    "clip_box",
    "crop_window",
    "decode_center_maps",
    "focal_loss",
    "gaussian_heatmap",
    "gaussian_radius",
    "generalized_box_iou",
    "giou_loss",
    "hann2d",
    "load_rgb_checkpoint",
    "load_tracker",
    "map_box_back",
    "normalize_image",
    "read_weights_only",
    "sample_target",
    "save_tracker",
    "tracking_loss",
]
