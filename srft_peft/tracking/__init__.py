"""The tracking toolkit: RGB-X tracker models, crops, losses, inference, datasets, pair sampling, demo data, metrics,
evaluation, plots and the training recipes of the examples.

Example:
    >>> from srft_peft.tracking import FinetuneConfig, finetune_rgbx
    >>> results = finetune_rgbx(FinetuneConfig(method="srft", modality="rgbt"))  # doctest: +SKIP
"""

from .architectures import ARCHITECTURES, TrackerArchitecture, get_architecture, register_architecture
from .cache import default_cache_dir, file_lock
from .checkpoint_io import (
    CheckpointFormatError,
    InertObject,
    LoadReport,
    PartialLoadError,
    load_rgb_checkpoint,
    load_tracker,
    load_trainer_checkpoint,
    read_weights_only,
    save_tracker,
)
from .crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    box_from_window,
    box_in_window,
    box_to_crop,
    clip_box,
    crop_and_resize,
    crop_tensor,
    crop_window,
    map_box_back,
    normalize_image,
    sample_target,
)
from .datasets import (
    DATASETS,
    MODALITIES,
    DatasetRecord,
    Sequence,
    depth_to_colormap,
    load_coesot,
    load_dataset,
    load_depthtrack,
    load_fe108,
    load_gtot,
    load_lasher,
    load_rgb_only,
    load_rgbt210,
    load_rgbt234,
    load_visevent,
    read_boxes,
    read_flags,
    register_dataset,
)
from .demo_data import DEMO_LAYOUTS, DemoConfig, default_demo_root, load_demo_dataset, make_demo_dataset
from .demo_tracker import DEMO_TRACKER_DIR, demo_tracker_recipe, load_demo_rgb_tracker, write_demo_tracker
from .evaluation import SequenceResult, load_results, result_prefix, run_tracker, save_result
from .losses import focal_loss, gaussian_heatmap, gaussian_radius, generalized_box_iou, giou_loss, tracking_loss
from .metrics import (
    PROTOCOLS,
    Protocol,
    auc,
    box_iou,
    center_error,
    evaluate_results,
    long_term_precision_recall,
    normalized_center_error,
    normalized_precision_curve,
    precision_curve,
    success_curve,
)
from .model import (
    OSTrackRGBX,
    ParameterCount,
    TrackerConfig,
    TrackerOutput,
    build_rgbx_from_rgb,
    decode_center_maps,
)
from .plots import plot_precision, plot_success, plot_summaries
from .sampling import PairSamplingConfig, TrackingPairDataset, collate
from .tracker import Tracker, hann2d
from .train import (
    CLIP_ORDERS,
    METHODS,
    PRIOR_SCOPES,
    SRFT_PRESETS,
    FinetuneConfig,
    PretrainConfig,
    build_finetune_model,
    ensure_pretrained_rgb,
    finetune_rgbx,
    format_results_table,
    load_pretrained_rgb,
    method_srft_config,
    pretrain_rgb,
)

__all__ = [
    # models (model.py) and their checkpoints (checkpoint_io.py)
    "OSTrackRGBX", "TrackerConfig", "TrackerOutput", "ParameterCount", "build_rgbx_from_rgb", "decode_center_maps",
    "save_tracker", "load_tracker", "load_rgb_checkpoint", "read_weights_only", "LoadReport", "CheckpointFormatError",
    "load_trainer_checkpoint", "InertObject", "PartialLoadError",
    # the tracker architectures (architectures/): one registered module per TrackerConfig.mode
    "TrackerArchitecture", "register_architecture", "get_architecture", "ARCHITECTURES",
    # crops shared by training and inference (crops.py)
    "crop_tensor", "crop_and_resize", "crop_window", "sample_target", "box_in_window", "box_from_window", "box_to_crop",
    "map_box_back", "clip_box", "normalize_image", "IMAGENET_MEAN", "IMAGENET_STD",
    # losses (losses.py)
    "tracking_loss", "focal_loss", "giou_loss", "generalized_box_iou", "gaussian_heatmap", "gaussian_radius",
    # inference (tracker.py)
    "Tracker", "hann2d",
    # data sets (datasets.py), demo data (demo_data.py), training pairs (sampling.py)
    "Sequence", "load_dataset", "DATASETS", "DatasetRecord", "register_dataset", "MODALITIES", "load_lasher",
    "load_rgbt234", "load_rgbt210",
    "load_gtot", "load_depthtrack", "load_visevent", "load_fe108", "load_coesot", "load_rgb_only", "read_boxes",
    "read_flags", "depth_to_colormap",
    "make_demo_dataset", "load_demo_dataset", "default_demo_root", "DemoConfig", "DEMO_LAYOUTS",
    "TrackingPairDataset", "PairSamplingConfig", "collate",
    # the shipped demo RGB tracker (demo_tracker.py)
    "load_demo_rgb_tracker", "demo_tracker_recipe", "write_demo_tracker", "DEMO_TRACKER_DIR",
    # evaluation (evaluation.py, metrics.py, plots.py)
    "run_tracker", "load_results", "result_prefix", "save_result", "SequenceResult",
    "evaluate_results", "PROTOCOLS", "Protocol", "precision_curve", "normalized_precision_curve", "success_curve",
    "auc", "long_term_precision_recall", "box_iou", "center_error", "normalized_center_error",
    "plot_success", "plot_precision", "plot_summaries",
    # caches (cache.py)
    "default_cache_dir", "file_lock",
    # training recipes (the train/ package)
    "finetune_rgbx", "FinetuneConfig", "pretrain_rgb", "PretrainConfig", "ensure_pretrained_rgb", "load_pretrained_rgb",
    "build_finetune_model", "method_srft_config", "format_results_table", "METHODS", "SRFT_PRESETS",
    "CLIP_ORDERS", "PRIOR_SCOPES",
]
