"""Training recipes shared by the examples and the benchmarks, one concern per module (as OSTrack's ``lib/train``):

============== =====================================================================================================
``config``     :class:`PretrainConfig`, :class:`FinetuneConfig` (every field documented and validated)
``methods``    :data:`METHODS`, their SRFT presets, the model of each method, what the prior covers
``data``       train / validation / test splits of a dataset root or of the demo set
``pretrain``   RGB pretraining of the demo tracker, its cache, the RGB tracker a fine-tune starts from
``finetune``   the fine-tuning loop under accelerate (clipping order, validation, early stopping)
``checkpoints`` trainer checkpoints and resumption
``evaluate``   evaluation on RGB-X and on RGB ([rgb, rgb]) sequences spread over processes, results table
``cli``        the examples' command line
============== =====================================================================================================

Example:
    >>> from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx
    >>> results = finetune_rgbx(FinetuneConfig(method="srft", modality="rgbt"))  # doctest: +SKIP
    >>> results["metrics"]["SR"]  # doctest: +SKIP
"""

from ..cache import default_cache_dir
from .cli import build_parser, config_from_args, finetune_main, parse_override
from .config import CLIP_ORDERS, DEFAULT_LR, MODALITY_DATASETS, FinetuneConfig, PretrainConfig
from .data import SPLIT_FOLDERS, resolve_split_root
from .evaluate import evaluate_tracker, format_results_table
from .finetune import clip_gradients, finetune_rgbx
from .methods import (
    METHODS,
    PRIOR_SCOPES,
    SRFT_METHODS,
    SRFT_PRESETS,
    build_finetune_model,
    method_srft_config,
    prior_scope_fields,
    uniform_prior,
)
from .pretrain import ensure_pretrained_rgb, load_pretrained_rgb, pretrain_rgb

__all__ = [
    "CLIP_ORDERS",
    "DEFAULT_LR",
    "METHODS",
    "MODALITY_DATASETS",
    "PRIOR_SCOPES",
    "SPLIT_FOLDERS",
    "SRFT_METHODS",
    "SRFT_PRESETS",
    "FinetuneConfig",
    "PretrainConfig",
    "build_finetune_model",
    "build_parser",
    "clip_gradients",
    "config_from_args",
    "default_cache_dir",
    "ensure_pretrained_rgb",
    "evaluate_tracker",
    "finetune_main",
    "finetune_rgbx",
    "format_results_table",
    "load_pretrained_rgb",
    "method_srft_config",
    "parse_override",
    "pretrain_rgb",
    "prior_scope_fields",
    "resolve_split_root",
    "uniform_prior",
]
