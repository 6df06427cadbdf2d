"""Training recipes shared by the examples and the benchmarks: RGB pretraining of the tiny tracker and RGB-X
fine-tuning with SRFT and the baselines, under 🤗 accelerate (one or several processes, mixed precision, gradient
accumulation, checkpoints and exact resumption), followed by a one-pass evaluation.

Methods of :func:`finetune_rgbx` (``FinetuneConfig.method``; see :data:`METHODS`):

============================ ===================================================================================
``srft``                     dual-stream model, SRFT with the K-FAC prior (estimated on RGB pairs) and the transfer
                             term under the cosine schedule kappa(t) (the defaults of :class:`~srft_peft.SRFTConfig`).
``srft-prior-only``          ``srft`` with ``lambda_transfer=0`` (prior term only).
``srft-transfer-only``       ``srft`` with ``lambda_prior=0`` (transfer damping only; no prior is estimated).
``ewc``                      EWC: diagonal Fisher prior, constant kappa (``kappa_shape="constant"``), no transfer.
``l2sp``                     L2-SP: the ``ewc`` preset with every Fisher value replaced by 1, i.e. the uniform anchor
                             penalty ``lambda_prior/2 ||theta - theta0||^2`` (no calibration pass).
``full``                     dual-stream model, plain full fine-tuning.
``prompt``                   ViPT-like prompt model: frozen RGB tracker, trainable prompts.
``lora``                     dual-stream model with peft LoRA on every attention/MLP linear (``qkv``, ``proj``,
                             ``fc1``, ``fc2`` of both streams and the fusion blocks); everything else frozen.
============================ ===================================================================================

Choices made here (each is a field of :class:`FinetuneConfig` / :class:`PretrainConfig`):

* Prior calibration (``srft``, ``srft-prior-only``, ``ewc``): the objective is the tracking loss of the
  RGB-initialised dual-stream model itself, on RGB (pretraining-domain) pairs fed as RGB-X input ``[rgb, rgb]``
  (X := RGB), ``prior_batches`` batches. The RGB pairs come from ``rgb_root``, or the demo RGB pretraining set when
  the default demo tracker is used, or else the RGB channels of the RGB-X training sequences.
* AdamW with ``weight_decay=0`` on the parameters SRFT regularizes (decay would pull them toward 0 instead of toward
  the pretrained weights theta0) and ``weight_decay`` on the other trainable parameters (all of them for ``full``,
  ``prompt``, ``lora``); one learning rate for all trainable parameters, cosine decay to 0 after ``warmup_steps``;
  gradients clipped to ``grad_clip`` (OSTrack: 0.1) before the optimizer step, i.e. before SRFT adds its prior
  gradient (``apply="grad"``).
* Steps, not epochs: training draws ``steps * grad_accum * batch_size * num_processes`` pairs, item ``i`` seeded by
  ``(seed, i)``, so a run is deterministic given its seed and a resumed run skips exactly the batches already used.

Example:
    >>> from srft_peft.tracking.training import FinetuneConfig, finetune_rgbx
    >>> results = finetune_rgbx(FinetuneConfig(method="srft", modality="rgbt"))  # doctest: +SKIP
    >>> results["metrics"]["SR"]  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from torch.utils.data import DataLoader

from ..config import SRFTConfig
from ..integrations.accelerate import prepare_srft
from ..model import SRFTModel, get_srft_model
from ..significance.prior import DiagonalSignificance, PriorSignificance
from .checkpoint_io import PartialLoadError, load_rgb_checkpoint, load_tracker, save_tracker
from .datasets import Sequence, load_dataset
from .demo_data import GENERATOR_VERSION, _lock, default_demo_root, make_demo_dataset
from .evaluation import run_tracker
from .metrics import evaluate_results
from .model import FUSION_INITS, OSTrackRGBX, TrackerConfig
from .plots import plot_summaries
from .sampling import TrackingPairDataset, collate
from .tracker import Tracker

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "MODALITY_DATASETS",
    "SRFT_PRESETS",
    "FinetuneConfig",
    "PretrainConfig",
    "build_finetune_model",
    "build_parser",
    "config_from_args",
    "default_cache_dir",
    "ensure_pretrained_rgb",
    "finetune_main",
    "finetune_rgbx",
    "format_results_table",
    "load_pretrained_rgb",
    "method_srft_config",
    "pretrain_rgb",
    "resolve_split_root",
]

logger = logging.getLogger(__name__)

TRAINING_VERSION = 1  # part of the cache key of ensure_pretrained_rgb: bump when the pretraining recipe changes
METHODS = ("srft", "srft-prior-only", "srft-transfer-only", "ewc", "l2sp", "full", "prompt", "lora")
SRFT_METHODS = ("srft", "srft-prior-only", "srft-transfer-only", "ewc", "l2sp")
# SRFTConfig fields of each SRFT-family method (on top of the user's overrides, which win).
SRFT_PRESETS: dict[str, dict[str, Any]] = {
    "srft": {},
    "srft-prior-only": {"lambda_transfer": 0.0},
    "srft-transfer-only": {"lambda_prior": 0.0},
    "ewc": {"prior_estimator": "diagonal", "kappa_shape": "constant", "lambda_transfer": 0.0},
    "l2sp": {"prior_estimator": "diagonal", "kappa_shape": "constant", "lambda_transfer": 0.0},
}
DEFAULT_LR = {"prompt": 1e-3, "lora": 1e-3}  # PEFT methods train few, freshly initialised weights
DEFAULT_FULL_LR = 2e-4
MODALITY_DATASETS = {"rgbt": "lasher", "rgbd": "depthtrack", "rgbe": "visevent"}
# Folder names of the training / test splits under a dataset root, tried in this order.
SPLIT_FOLDERS = {
    "train": ("train", "trainingset", "TrainingSet/trainingset", "TrainingSet", "train_subset", "training", "Train"),
    "test": ("test", "testingset", "TestingSet/testingset", "TestingSet", "test_subset", "testing", "Test"),
}
LORA_TARGETS = r".*\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
# The demo RGB "pretraining domain": other scenes (seed 1) than the RGB-X demo sets (seed 0).
PRETRAIN_DEMO = {"modality": "rgb", "num_train": 64, "num_test": 4, "seed": 1}
PRETRAIN_DEMO_NAME = "rgb-pretrain"
_TINY_SIZES = (32, 64)  # template / search crop of the CPU demo tracker (4 + 16 tokens at patch 16)
OSTRACK_JITTER = (3.0, 0.25)  # OSTrack's search-region centre / scale jitter
DEMO_JITTER = (1.5, 0.5)  # the demo tracker's: centre jitter halved, scale jitter doubled (see PretrainConfig)


def default_cache_dir() -> Path:
    """``$SRFT_CACHE_DIR`` if set, else ``~/.cache/srft_peft`` (pretrained demo trackers live in ``pretrained/``)."""
    env = os.environ.get("SRFT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "srft_peft"


def _progress(iterable: Any = None, enabled: bool = True, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, **kwargs)


def _cosine_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return fn


def _configure_threads(num_threads: int | None, device: torch.device) -> None:
    """``torch.set_num_threads(num_threads)``; by default 1 on the CPU when ``OMP_NUM_THREADS`` is unset: the small
    tracker's ops are too small to gain from several intra-op threads, which only contend (several-fold slower) on a
    busy machine or with several processes."""
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)


def _set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _rgb_as_rgbx(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RGB pairs (C = 3) -> RGB-X pairs with X := RGB (C = 6)."""
    out = dict(batch)
    for key in ("template", "search"):
        if out[key].shape[1] == 3:
            out[key] = torch.cat([out[key], out[key]], dim=1)
    return out


def _collate_rgb_as_rgbx(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return _rgb_as_rgbx(collate(items))


def _tracking_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["template"], batch["search"], search_box=batch["search_box"]).loss


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def resolve_split_root(root: str | Path, split: str) -> Path:
    """The folder of ``split`` ("train" / "test") under a dataset root (see :data:`SPLIT_FOLDERS`).

    Example:
        >>> resolve_split_root("/data/LasHeR", "test")  # /data/LasHeR/testingset if it exists  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"no {split} split under {root}: looked for {list(SPLIT_FOLDERS[split])}; pass the split folder explicitly "
        f"(--{split}-root) or a split file (--{split}-split-file)"
    )


def _truncate(seq: Sequence, frames: int | None) -> Sequence:
    if frames is None or frames >= len(seq):
        return seq
    return Sequence(
        seq.name, seq.frames_rgb[:frames], seq.frames_x[:frames], seq.gt[:frames], visible=seq.visible[:frames],
        gt_x=None if seq.gt_x is None else seq.gt_x[:frames], modality=seq.modality, dataset=seq.dataset,
        init_box=seq.init_box,
    )


def pretrain_demo_root() -> Path:
    """Folder of the demo RGB pretraining set (built by :func:`ensure_pretrained_rgb` when needed)."""
    return default_demo_root() / PRETRAIN_DEMO_NAME


def _demo_rgb_split(split: str) -> list[Sequence]:
    root = make_demo_dataset(pretrain_demo_root(), **PRETRAIN_DEMO)
    return load_dataset("rgb", root / split)


def _load_rgb_split(rgb_root: str | Path, split: str) -> list[Sequence]:
    root = Path(rgb_root).expanduser()
    try:
        root = resolve_split_root(root, split)
    except FileNotFoundError:
        pass  # the sequences themselves
    return load_dataset("rgb", root)


# ----------------------------------------------------------------------------------------------------------------------
# RGB pretraining
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class PretrainConfig:
    """Recipe of :func:`pretrain_rgb` (OSTrack's recipe scaled down to a CPU-sized tracker and data set)."""

    steps: int = field(default=900, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per step."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (OSTrack: 4e-4 with an MAE-initialised "
                                                     "ViT; a ViT from scratch needs more), cosine decay to 0."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps before the cosine decay."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay (OSTrack: 1e-4)."})
    grad_clip: float = field(default=0.1, metadata={"help": "Gradient-norm clip (OSTrack: 0.1); 0 = off."})
    center_jitter: float = field(
        default=DEMO_JITTER[0],
        metadata={"help": "Search-centre jitter (OSTrack: 3). Halved: a tiny tracker trained from scratch for minutes "
                  "learns to localise faster when the target stays nearer the centre, where the tracker looks."},
    )
    scale_jitter: float = field(
        default=DEMO_JITTER[1],
        metadata={"help": "Search log-scale jitter (OSTrack: 0.25). Doubled: a wider range of target sizes teaches "
                  "the size head to correct a wrong previous box instead of compounding it."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the initialisation and of the pair sampling."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PretrainConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"PretrainConfig.warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")


def pretrain_rgb(
    config: TrackerConfig | None = None,
    data_root: str | Path | None = None,
    output_dir: str | Path = "outputs/pretrain_rgb",
    recipe: PretrainConfig | None = None,
    *,
    dataset: str = "rgb",
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    **overrides: Any,
) -> Path:
    """Train an RGB tracker from scratch on RGB sequences and save it with :func:`save_tracker`.

    Args:
        config: the tracker (``mode="rgb"``); default ``TrackerConfig(variant="tiny", mode="rgb", template_size=32,
            search_size=64)`` (small crops for CPU speed: the demo targets are 17-29 px, so a factor-4 search region
            is ~100 px, resized to 64).
        data_root: training sequences (a folder with ``train/`` or the sequences themselves), read by the
            ``dataset`` loader; default: the demo RGB pretraining set (built if absent).
        output_dir: where ``config.json`` / ``model.safetensors`` (and ``pretrain.json``, the recipe) go.
        recipe: steps, batch size, learning rate, ...; ``overrides`` replace its fields.
        num_threads: intra-op CPU threads (``torch.set_num_threads``); default 1 on the CPU unless ``OMP_NUM_THREADS``
            is set.

    Returns:
        ``output_dir``.
    """
    cfg = config or TrackerConfig(variant="tiny", mode="rgb", template_size=_TINY_SIZES[0], search_size=_TINY_SIZES[1])
    if cfg.mode != "rgb":
        raise ValueError(f"pretrain_rgb trains an RGB tracker; got mode={cfg.mode!r}")
    recipe = dataclasses.replace(recipe or PretrainConfig(), **overrides)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    _configure_threads(num_threads, dev)
    if data_root is None:
        seqs = _demo_rgb_split("train")
    else:
        root = Path(data_root).expanduser()
        with contextlib.suppress(FileNotFoundError):
            root = resolve_split_root(root, "train")
        seqs = load_dataset(dataset, root)
    _set_seed(recipe.seed)
    model = OSTrackRGBX(cfg).to(dev).train()
    total = recipe.steps * recipe.batch_size
    data = TrackingPairDataset(seqs, samples_per_epoch=total, template_size=cfg.template_size,
                               search_size=cfg.search_size, rgb_only=True, seed=recipe.seed,
                               center_jitter=recipe.center_jitter, scale_jitter=recipe.scale_jitter)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=False, drop_last=True, collate_fn=collate,
                        num_workers=recipe.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_lambda(recipe.warmup_steps, recipe.steps))
    bar = _progress(total=recipe.steps, enabled=progress, desc="RGB pretraining", unit="step")
    running = None
    for batch in loader:
        batch = _to_device(batch, dev)
        loss = _tracking_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
    bar.close()
    out = save_tracker(model.eval().cpu(), output_dir)
    (out / "pretrain.json").write_text(json.dumps(
        {"recipe": dataclasses.asdict(recipe), "tracker": cfg.to_dict(), "dataset": dataset,
         "data_root": str(data_root) if data_root is not None else f"demo:{PRETRAIN_DEMO_NAME}",
         "final_loss": running}, indent=2) + "\n")
    return out


def ensure_pretrained_rgb(
    cache_dir: str | Path | None = None,
    config: TrackerConfig | None = None,
    recipe: PretrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """The cached demo RGB tracker, trained by :func:`pretrain_rgb` on the demo RGB set when absent.

    The folder name holds a hash of the tracker config, the recipe and the data generator version, so a change of any
    of them trains a new one; a file lock makes concurrent processes (``accelerate launch``) train it once. Training is
    deterministic (fixed seed), so every machine rebuilds the same model.

    Returns:
        The tracker folder (``load_tracker`` reads it), ``<cache_dir>/pretrained/rgb-<variant>-z<T>-x<S>-<hash>``.
    """
    cfg = config or TrackerConfig(variant="tiny", mode="rgb", template_size=_TINY_SIZES[0], search_size=_TINY_SIZES[1])
    recipe = recipe or PretrainConfig()
    key = json.dumps({"tracker": cfg.to_dict(), "recipe": dataclasses.asdict(recipe), "data": PRETRAIN_DEMO,
                      "generator": GENERATOR_VERSION, "training": TRAINING_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "pretrained"
    folder = base / f"rgb-{cfg.variant}-z{cfg.template_size}-x{cfg.search_size}-{digest}"
    with _lock(base / f".{folder.name}.lock"):
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
        try:
            pretrain_rgb(cfg, None, tmp, recipe, progress=progress)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_pretrained_rgb(
    pretrained: str | Path | None,
    variant: str = "tiny",
    template_size: int | None = None,
    search_size: int | None = None,
    progress: bool = True,
    allow_partial_load: bool = False,
) -> tuple[OSTrackRGBX, str]:
    """The RGB tracker to start from, and a description of where it came from.

    ``pretrained``: None (the cached demo tracker, see :func:`ensure_pretrained_rgb`), a folder written by
    :func:`save_tracker`, or an OSTrack/DropTrack checkpoint file (``.pth.tar``/``.pth``) loaded into
    ``TrackerConfig(variant, "rgb", template_size, search_size)`` with :func:`load_rgb_checkpoint` (sizes default to
    OSTrack-256's 128/256 for ``small``/``base`` and to 32/64 for ``tiny``). A checkpoint with missing, unexpected or
    mismatched keys is an error (``ValueError`` naming the file, counts and examples) unless ``allow_partial_load``;
    keys the tracker never uses (cls token, ``pos_embed``, classifier head) are not counted.
    """
    if pretrained is None:
        folder = ensure_pretrained_rgb(progress=progress)
        return load_tracker(folder), f"demo:{folder}"
    path = Path(pretrained).expanduser()
    if path.is_dir():
        model = load_tracker(path)
        if model.config.mode != "rgb":
            raise ValueError(f"{path} holds a {model.config.mode!r} tracker; fine-tuning starts from an RGB one")
        return model, str(path)
    if path.is_file():
        default = _TINY_SIZES if variant == "tiny" else (128, 256)
        cfg = TrackerConfig(variant=variant, mode="rgb", template_size=template_size or default[0],
                            search_size=search_size or default[1])
        model = OSTrackRGBX(cfg)
        try:
            report = load_rgb_checkpoint(model, path, strict=not allow_partial_load)
        except PartialLoadError as err:
            raise PartialLoadError(f"--pretrained: {err}. Check --variant / --template-size / --search-size, or pass "
                                   "--allow-partial-load to train from a partial load") from None
        if not report.ok:
            warnings.warn(f"--allow-partial-load: {report.summary()}", stacklevel=2)
        return model, str(path)
    raise FileNotFoundError(f"--pretrained {pretrained!r} is neither a tracker folder nor a checkpoint file")


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning configuration
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class FinetuneConfig:
    """Everything :func:`finetune_rgbx` needs; every field is a command-line flag of the examples."""

    method: str = field(default="srft", metadata={"help": f"One of {', '.join(METHODS)}."})
    modality: str = field(default="rgbt", metadata={"help": "X modality: rgbt, rgbd or rgbe."})
    data_root: str | None = field(
        default=None,
        metadata={"help": "Dataset root holding the train and test splits (e.g. LasHeR with trainingset/ and "
                  "testingset/); default: the demo set of the modality, created if absent."},
    )
    dataset: str | None = field(
        default=None,
        metadata={"help": "Loader name (lasher, rgbt234, gtot, depthtrack, visevent, fe108, coesot, ...); default: "
                  "lasher / depthtrack / visevent for rgbt / rgbd / rgbe."},
    )
    train_root: str | None = field(default=None, metadata={"help": "Training split folder (overrides data_root)."})
    test_root: str | None = field(default=None, metadata={"help": "Test split folder (overrides data_root)."})
    train_split_file: str | None = field(default=None, metadata={"help": "File listing training sequence names."})
    test_split_file: str | None = field(default=None, metadata={"help": "File listing test sequence names."})
    pretrained: str | None = field(
        default=None,
        metadata={"help": "RGB tracker: a save_tracker folder or an OSTrack .pth.tar; default: the cached demo tracker "
                  "(pretrained on the demo RGB set when absent)."},
    )
    variant: str = field(default="tiny", metadata={"help": "ViT size when --pretrained is a .pth.tar: tiny/small/base."})
    template_size: int | None = field(default=None, metadata={"help": "Template crop for a .pth.tar (base: 128)."})
    search_size: int | None = field(default=None, metadata={"help": "Search crop for a .pth.tar (base: 256)."})
    allow_partial_load: bool = field(
        default=False,
        metadata={"help": "Accept a --pretrained .pth.tar whose keys or shapes do not all match the tracker (the rest "
                  "stays randomly initialised); by default that is an error."},
    )
    prior: str | None = field(
        default=None,
        metadata={"help": "Prior significance to load (folder or Hub repo id, see srft.save_pretrained); default: "
                  "estimate it on RGB pairs."},
    )
    rgb_root: str | None = field(
        default=None,
        metadata={"help": "RGB-only sequences (<seq>/img + groundtruth.txt; with train/ and test/ or the sequences "
                  "themselves) for the prior and for --evaluate-rgb; default: the demo RGB set with the demo tracker, "
                  "else the RGB channels of the RGB-X sequences."},
    )
    prior_batches: int = field(default=8, metadata={"help": "Calibration batches for the prior."})
    output_dir: str = field(default="outputs/finetune", metadata={"help": "Where results, plots, logs, model go."})
    steps: int = field(default=150, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=16, metadata={"help": "Pairs per process and micro-batch."})
    lr: float | None = field(
        default=None, metadata={"help": "Learning rate; default 2e-4 (full, SRFT family) or 1e-3 (prompt, lora)."}
    )
    weight_decay: float = field(
        default=1e-4, metadata={"help": "AdamW weight decay of the parameters SRFT does not regularize (0 on those it "
                                "does)."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps before the cosine."})
    grad_clip: float = field(default=0.1, metadata={"help": "Gradient-norm clip (OSTrack: 0.1); 0 = off."})
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps (micro-batches per step)."})
    center_jitter: float | None = field(
        default=None, metadata={"help": "Search-centre jitter of the training pairs; default: the demo tracker's 1.5 "
                                "with the demo tracker, OSTrack's 3 otherwise."}
    )
    scale_jitter: float | None = field(
        default=None, metadata={"help": "Search log-scale jitter; default: 0.5 with the demo tracker, OSTrack's 0.25 "
                                "otherwise."}
    )
    mixed_precision: str = field(default="no", metadata={"help": "no, bf16 or fp16 (fp16 needs a GPU)."})
    seed: int = field(default=0, metadata={"help": "Seed (model initialisation, pair sampling)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    num_threads: int | None = field(
        default=None, metadata={"help": "Intra-op CPU threads per process; default 1 on the CPU unless OMP_NUM_THREADS "
                                "is set (the small tracker gains nothing from more, and they contend)."}
    )
    lora_r: int = field(default=8, metadata={"help": "lora: rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "lora: alpha."})
    fusion_init: str = field(
        default="identity", metadata={"help": "Dual-stream fusion blocks at step 0: 'identity' (the model fed [rgb, "
                                      "rgb] is the RGB tracker) or 'copy' (the SRFT authors'); see "
                                      "OSTrackRGBX.init_from_rgb."}
    )
    srft_overrides: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "SRFTConfig fields on top of the method's preset (e.g. prior_rank)."}
    )
    save_every: int = field(default=100, metadata={"help": "accelerator.save_state every N steps (0 = never)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Newest checkpoints kept in output_dir/checkpoints."})
    resume: str | None = field(
        default=None, metadata={"help": "Resume from a checkpoint folder, or 'latest' in output_dir/checkpoints."}
    )
    log_every: int = field(default=10, metadata={"help": "Log loss/kappa/penalty every N steps."})
    report_to: str | None = field(default="tensorboard", metadata={"help": "accelerate tracker ('none' = off)."})
    eval_sequences: int | None = field(default=None, metadata={"help": "Evaluate on the first N test sequences."})
    eval_frames: int | None = field(default=None, metadata={"help": "Evaluate on the first N frames of each."})
    evaluate_baseline: bool = field(
        default=True, metadata={"help": "Also evaluate the RGB tracker before fine-tuning on the same test sequences "
                                "(RGB channels only; with evaluate_rgb also on the RGB-only ones)."}
    )
    evaluate_rgb: bool = field(
        default=False,
        metadata={"help": "Also evaluate RGB-skill retention: the fine-tuned model on RGB-only test sequences fed as "
                  "[rgb, rgb]."},
    )
    progress: bool = field(default=True, metadata={"help": "tqdm progress bars (main process)."})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.modality not in MODALITY_DATASETS:
            raise ValueError(f"modality must be one of {sorted(MODALITY_DATASETS)}, got {self.modality!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.fusion_init not in FUSION_INITS:
            raise ValueError(f"fusion_init must be one of {list(FUSION_INITS)}, got {self.fusion_init!r}")
        for name in ("steps", "batch_size", "grad_accum", "prior_batches", "log_every", "lora_r"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("save_every", "keep_checkpoints", "warmup_steps", "num_workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.report_to in ("none", ""):
            self.report_to = None
        unknown = sorted(set(self.srft_overrides) - {f.name for f in dataclasses.fields(SRFTConfig)})
        if unknown:
            raise ValueError(f"srft_overrides has unknown SRFTConfig fields {unknown}")
        method_srft_config(self.method, self.steps, self.srft_overrides)  # a bad value (e.g. inf) fails here, not later

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, DEFAULT_FULL_LR)

    @property
    def dataset_name(self) -> str:
        return self.dataset or MODALITY_DATASETS[self.modality]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def method_srft_config(method: str, total_steps: int, overrides: dict[str, Any] | None = None) -> SRFTConfig | None:
    """The :class:`SRFTConfig` of ``method`` (its :data:`SRFT_PRESETS` entry, then ``overrides``), or None for the
    methods without SRFT (``full``, ``prompt``, ``lora``).

    Example:
        >>> cfg = method_srft_config("ewc", 100)
        >>> cfg.prior_estimator, cfg.kappa_shape, cfg.lambda_transfer
        ('diagonal', 'constant', 0.0)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method not in SRFT_METHODS:
        if overrides:
            raise ValueError(f"srft overrides {sorted(overrides)} given for method {method!r}, which does not use SRFT")
        return None
    return SRFTConfig(**{**SRFT_PRESETS[method], "total_steps": total_steps, **(overrides or {})})


def uniform_prior(srft: SRFTModel) -> PriorSignificance:
    """L2-SP's prior: a diagonal "Fisher" of ones for every regularized parameter (R = 1/2 ||theta - theta0||^2)."""
    entries = {name: DiagonalSignificance(name, torch.ones_like(p, dtype=torch.float32), source="uniform")
               for name, p in zip(srft.regularized_parameters, srft._engine.params)}
    return PriorSignificance(entries, normalizer=1.0, objective="uniform (L2-SP)", normalized=True)


def build_finetune_model(
    method: str, rgb_model: OSTrackRGBX, lora_r: int = 8, lora_alpha: float = 16.0, fusion_init: str = "identity"
) -> nn.Module:
    """The trainable model of ``method`` built from an RGB tracker (a new model; ``rgb_model`` is not changed).

    ``prompt``: ``OSTrackRGBX.from_rgb(rgb, "prompt")``; ``lora``: peft ``get_peft_model`` on the dual-stream model
    with :data:`LORA_TARGETS`; every other method: ``OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init)`` (SRFT is
    wrapped around it by :func:`finetune_rgbx`).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method == "prompt":
        return OSTrackRGBX.from_rgb(rgb_model, "prompt")
    model = OSTrackRGBX.from_rgb(rgb_model, "dual_stream", fusion_init=fusion_init)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
        return get_peft_model(model, config)
    return model


def _tracker_of(model: nn.Module) -> OSTrackRGBX:
    """The OSTrackRGBX inside an SRFT / peft wrapper (LoRA merged into a copy)."""
    if isinstance(model, SRFTModel):
        return model.get_base_model()
    if isinstance(model, OSTrackRGBX):
        return model
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    raise TypeError(f"unexpected model type {type(model).__name__}")


# ----------------------------------------------------------------------------------------------------------------------
# accelerate helpers
# ----------------------------------------------------------------------------------------------------------------------
def _make_accelerator(cfg: FinetuneConfig, output_dir: Path) -> Any:
    from accelerate import Accelerator

    log_with = cfg.report_to
    if log_with == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            warnings.warn("tensorboard is not installed: logging disabled (pip install tensorboard)", stacklevel=3)
            log_with = None
    return Accelerator(cpu=_cpu_distributed(), mixed_precision=cfg.mixed_precision,
                       gradient_accumulation_steps=cfg.grad_accum, log_with=log_with, project_dir=str(output_dir))


def _cpu_distributed() -> bool:
    """True when several processes were launched (``accelerate launch --multi_gpu``, ``torchrun``) on a machine without
    an accelerator device: accelerate then needs ``cpu=True`` to join them with gloo instead of running each alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return False
    available = getattr(getattr(torch, "accelerator", None), "is_available", None)
    has_device = available() if available is not None else torch.cuda.is_available()
    return not has_device


_STEP_DIR = re.compile(r"^step_(\d+)$")


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def _resume_path(cfg: FinetuneConfig, output_dir: Path) -> tuple[Path, int] | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        found = _checkpoints(output_dir / "checkpoints")
        if not found:
            warnings.warn(f"--resume latest: no checkpoint in {output_dir / 'checkpoints'}; starting from scratch",
                          stacklevel=3)
            return None
        return found[-1][1], _check_checkpoint(found[-1][1])
    path = Path(cfg.resume).expanduser()
    return path, _check_checkpoint(path)


def _check_checkpoint(path: Path) -> int:
    """The step of a checkpoint folder written by ``_save_checkpoint``, after a quick look at every file in it; any
    problem is an error naming the file (before the run creates or changes anything)."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"--resume {path}: not a checkpoint folder written by finetune_rgbx (no {state_file})")
    try:
        step = json.loads(state_file.read_bytes().decode("utf-8")).get("step")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"--resume: {state_file} is not a JSON object with a 'step' ({err})") from None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"--resume: {state_file}: 'step' must be a non-negative integer, got {step!r}")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"--resume {path}: no model weights (*.safetensors) in the checkpoint folder")
    for file in weights:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as err:  # SafetensorError: truncated header, not a safetensors file, ...
            raise ValueError(f"--resume: {file} is not a readable safetensors file ({err})") from None
    for file in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):  # accelerate writes these with torch.save (zip)
        if not zipfile.is_zipfile(file):
            raise ValueError(f"--resume: {file} is damaged (not a complete torch.save archive)")
    return step


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


_SCALARS = ("PR", "NPR", "SR", "MPR", "MSR", "precision", "recall", "F", "fps")


def _scalars(summary: dict[str, Any]) -> dict[str, float]:
    return {k: float(summary[k]) for k in _SCALARS if k in summary}


class _RepeatRGB:
    """Feeds an RGB-X tracker RGB-only frames as [rgb, rgb] (RGB-skill retention)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def initialize(self, image: np.ndarray, box: np.ndarray) -> Any:
        return self.tracker.initialize(np.concatenate([image[..., :3]] * 2, axis=2), box)

    def track(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        return self.tracker.track(np.concatenate([image[..., :3]] * 2, axis=2))


def _evaluate(model: OSTrackRGBX, seqs: list[Sequence], results_dir: Path, device: Any, progress: bool,
              rgb_input: bool = False) -> dict[str, Any]:
    tracker: Any = Tracker(model, device=device)
    if rgb_input and model.config.mode != "rgb":
        tracker = _RepeatRGB(tracker)
    results = run_tracker(tracker, seqs, results_dir=results_dir, progress=progress, rgb_only=rgb_input)
    return evaluate_results(seqs, results)


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------------------------------
def _load_rgbx_splits(cfg: FinetuneConfig) -> tuple[list[Sequence], list[Sequence], str]:
    if cfg.data_root is None and cfg.train_root is None and cfg.test_root is None:
        from .demo_data import DEMO_LAYOUTS

        root = make_demo_dataset(default_demo_root() / cfg.modality, modality=cfg.modality)
        layout = DEMO_LAYOUTS[cfg.modality]
        return load_dataset(layout, root / "train"), load_dataset(layout, root / "test"), f"demo:{root}"
    name = cfg.dataset_name
    splits = []
    for split, explicit, split_file in (("train", cfg.train_root, cfg.train_split_file),
                                        ("test", cfg.test_root, cfg.test_split_file)):
        if explicit is not None:
            root = Path(explicit).expanduser()
        elif cfg.data_root is None:
            raise ValueError(f"give --data-root or --{split}-root")
        elif split_file is not None:
            root = Path(cfg.data_root).expanduser()
            with contextlib.suppress(FileNotFoundError):
                root = resolve_split_root(root, split)
        else:
            root = resolve_split_root(cfg.data_root, split)
        kwargs = {"split_file": split_file} if split_file is not None else {}
        splits.append(load_dataset(name, root, **kwargs))
    return splits[0], splits[1], str(cfg.data_root or cfg.train_root)


def _rgb_sequences(cfg: FinetuneConfig, split: str, demo_tracker: bool, rgbx: list[Sequence]) -> list[Sequence]:
    """RGB-only sequences for the prior (train) or the retention test (test); see FinetuneConfig.rgb_root."""
    if cfg.rgb_root is not None:
        return _load_rgb_split(cfg.rgb_root, split)
    if demo_tracker:
        return _demo_rgb_split(split)
    return rgbx  # RGB channels of the RGB-X sequences (read with rgb_only=True)


def finetune_rgbx(config: FinetuneConfig | None = None, accelerator: Any = None, **overrides: Any) -> dict[str, Any]:
    """Fine-tune an RGB tracker on RGB-X data with ``config.method``, evaluate it and write the results.

    Steps: data (the demo set is built if needed) -> RGB tracker (:func:`load_pretrained_rgb`) -> method model
    (:func:`build_finetune_model`; SRFT wrapped with :func:`~srft_peft.get_srft_model` and the prior estimated or
    loaded, then saved to ``output_dir/prior``) -> ``accelerator.prepare`` -> ``srft.attach(optimizer, steps)`` ->
    optional ``accelerator.load_state`` (``resume``) -> training loop (``accumulate``, ``backward``,
    ``clip_grad_norm_``, cosine LR, ``log``, ``save_state`` every ``save_every`` steps) -> on the main process:
    ``save_tracker`` to ``output_dir/model``, one-pass evaluation on the test sequences, plots and ``results.json``.

    Args:
        config: the run; ``overrides`` replace its fields.
        accelerator: an ``accelerate.Accelerator`` to use (its mixed precision / accumulation settings then apply);
            by default one is made from the config, logging to TensorBoard under ``output_dir``.

    Returns:
        The results (also in ``output_dir/results.json``) on the main process: ``metrics`` (PR, NPR, SR, and MPR/MSR
        or precision/recall/F where the protocol has them), ``baseline_metrics`` (``evaluate_baseline``),
        ``rgb_metrics`` (``evaluate_rgb``), ``baseline_rgb_metrics`` (both), ``summary`` (curves, per-sequence
        scores), ``plots``, ``train_time_s``, ``final_loss``, parameter counts and the config. Other processes get ``{}``.
    """
    cfg = dataclasses.replace(config or FinetuneConfig(), **overrides)
    output_dir = Path(cfg.output_dir).expanduser()  # created once the inputs below have been read and checked
    accelerator = accelerator if accelerator is not None else _make_accelerator(cfg, output_dir)
    main = accelerator.is_main_process
    show = cfg.progress and accelerator.is_local_main_process
    device = accelerator.device
    _configure_threads(cfg.num_threads, device)
    _set_seed(cfg.seed)

    # --- inputs: checkpoint, data and the RGB tracker (built once; the other processes wait on the file locks) --------
    resume = _resume_path(cfg, output_dir)
    train_seqs, test_seqs, data_desc = _load_rgbx_splits(cfg)
    rgb_model, pretrained_desc = load_pretrained_rgb(cfg.pretrained, cfg.variant, cfg.template_size, cfg.search_size,
                                                     progress=show, allow_partial_load=cfg.allow_partial_load)
    demo_tracker = cfg.pretrained is None
    tcfg = rgb_model.config
    default_jitter = DEMO_JITTER if demo_tracker else OSTRACK_JITTER
    jitter = {"center_jitter": default_jitter[0] if cfg.center_jitter is None else cfg.center_jitter,
              "scale_jitter": default_jitter[1] if cfg.scale_jitter is None else cfg.scale_jitter}

    # --- the model of the method ------------------------------------------------------------------------------------
    _set_seed(cfg.seed)
    model = build_finetune_model(cfg.method, rgb_model, cfg.lora_r, cfg.lora_alpha, cfg.fusion_init).to(device)
    srft_cfg = method_srft_config(cfg.method, cfg.steps, cfg.srft_overrides)
    srft: SRFTModel | None = None
    prior_desc = "none (no SRFT)"
    if srft_cfg is not None:
        srft = get_srft_model(model, srft_cfg)
        model = srft
        saved_prior = output_dir / "prior"
        if cfg.method == "l2sp":
            srft.set_prior(uniform_prior(srft))
            prior_desc = "uniform (L2-SP)"
        elif srft_cfg.lambda_prior == 0.0:
            prior_desc = "none (lambda_prior = 0)"
        elif cfg.prior is not None:
            srft.load_significance(cfg.prior)
            prior_desc = f"loaded: {cfg.prior}"
        elif resume is not None and (saved_prior / "significance.safetensors").is_file():
            srft.load_significance(saved_prior)
            prior_desc = f"loaded: {saved_prior} (resume)"
        else:
            calib = _rgb_sequences(cfg, "train", demo_tracker, train_seqs)
            data = TrackingPairDataset(calib, samples_per_epoch=cfg.prior_batches * cfg.batch_size,
                                       template_size=tcfg.template_size, search_size=tcfg.search_size,
                                       rgb_only=True, seed=cfg.seed + 1, **jitter)
            loader = DataLoader(data, batch_size=cfg.batch_size, collate_fn=_collate_rgb_as_rgbx,
                                num_workers=cfg.num_workers)

            def calibration_loss(m: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
                return _tracking_loss(m, _to_device(batch, device))

            # Every process runs the same calibration batches: the estimator's all-reduce then leaves the
            # single-process result, identical on every process.
            srft.estimate_prior(loader, loss_fn=calibration_loss, progress=show)
            prior_desc = f"estimated on {len(data)} RGB pairs ([rgb, rgb] input, tracking loss)"
        if main and srft.prior is not None and cfg.method != "l2sp":
            srft.save_pretrained(saved_prior)

    output_dir.mkdir(parents=True, exist_ok=True)

    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = {"total": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable)}

    # --- optimizer, schedule, data loader ---------------------------------------------------------------------------
    regularized = {id(p) for p in srft._engine.params} if srft is not None else set()
    groups = [{"params": [p for p in trainable if id(p) in regularized], "weight_decay": 0.0},
              {"params": [p for p in trainable if id(p) not in regularized], "weight_decay": cfg.weight_decay}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    procs = accelerator.num_processes
    # accelerate steps a prepared scheduler num_processes times per optimizer step
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _cosine_lambda(cfg.warmup_steps * procs, cfg.steps * procs)
    )
    train_data = TrackingPairDataset(train_seqs, samples_per_epoch=cfg.steps * cfg.grad_accum * cfg.batch_size * procs,
                                     template_size=tcfg.template_size, search_size=tcfg.search_size, seed=cfg.seed,
                                     **jitter)
    train_loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=False, drop_last=True,
                              collate_fn=collate, num_workers=cfg.num_workers)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    if srft is not None:
        prepare_srft(accelerator, srft, optimizer, total_steps=cfg.steps)

    start_step = 0
    if resume is not None:
        path, start_step = resume
        try:
            accelerator.load_state(str(path))
        except Exception as err:  # a damaged file that passed _check_checkpoint's quick look
            raise ValueError(f"--resume {path}: could not load the checkpoint ({type(err).__name__}: {err})") from err
        if show:
            print(f"resumed from {path} (step {start_step})")

    if cfg.report_to is not None:
        hparams = {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("finetune", config=hparams)

    # --- training -------------------------------------------------------------------------------------------------------
    model.train()
    step = start_step
    loader: Any = train_loader
    if start_step:
        loader = accelerator.skip_first_batches(train_loader, start_step * cfg.grad_accum)
    bar = _progress(total=cfg.steps, initial=start_step, enabled=show, desc=f"fine-tuning ({cfg.method})", unit="step")
    tic = time.perf_counter()
    last_loss = math.nan
    loss_sum = torch.zeros((), device=device)
    loss_count = 0
    for batch in loader if step < cfg.steps else []:
        with accelerator.accumulate(model):
            loss = _tracking_loss(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach().float()
        loss_count += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean_loss = accelerator.reduce(loss_sum / loss_count, reduction="mean")
            last_loss = float(mean_loss)
            logs = {"train/loss": last_loss, "train/lr": scheduler.get_last_lr()[0]}
            if srft is not None:
                with torch.no_grad():
                    logs["srft/kappa"] = srft.kappa
                    logs["srft/prior_penalty"] = float(srft.prior_penalty())
            accelerator.log(logs, step=step)
            bar.set_postfix(loss=f"{last_loss:.3f}")
            loss_sum.zero_()
            loss_count = 0
        if cfg.save_every and (step % cfg.save_every == 0 or step == cfg.steps):
            _save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints)
        if step >= cfg.steps:
            break
    bar.close()
    train_time = time.perf_counter() - tic
    accelerator.wait_for_everyone()
    accelerator.end_training()

    if not main:
        return {}
    # --- save and evaluate (main process) -----------------------------------------------------------------------------
    final = _tracker_of(accelerator.unwrap_model(model))
    save_tracker(final, output_dir / "model")
    if cfg.method == "lora":
        accelerator.unwrap_model(model).save_pretrained(str(output_dir / "adapter"))
    eval_seqs = [_truncate(s, cfg.eval_frames) for s in test_seqs[: cfg.eval_sequences]]
    results: dict[str, Any] = {
        "method": cfg.method,
        "modality": cfg.modality,
        "dataset": eval_seqs[0].dataset if eval_seqs else cfg.dataset_name,
        "data": data_desc,
        "pretrained": pretrained_desc,
        "prior": prior_desc,
        "srft_config": srft_cfg.to_dict() if srft_cfg is not None else None,
        "steps": step,
        "num_processes": procs,
        "train_time_s": train_time,
        "final_loss": last_loss,
        "parameters": counts,
        "config": cfg.to_dict(),
    }
    summary = _evaluate(final, eval_seqs, output_dir / "tracking_results" / cfg.method, device, show)
    results["metrics"] = _scalars(summary)
    summaries = {cfg.method: summary}
    if cfg.evaluate_baseline:
        base = _evaluate(rgb_model, eval_seqs, output_dir / "tracking_results" / "rgb_baseline", device, show)
        results["baseline_metrics"] = _scalars(base)
        summaries["RGB tracker (no X)"] = base
    results["plots"] = {k: str(v) for k, v in plot_summaries(summaries, output_dir / "plots").items()}
    if cfg.evaluate_rgb:
        rgb_test = _rgb_sequences(cfg, "test", demo_tracker, test_seqs)
        rgb_test = [_truncate(s, cfg.eval_frames) for s in rgb_test[: cfg.eval_sequences]]
        rgb_ft = _evaluate(final, rgb_test, output_dir / "tracking_results" / f"{cfg.method}_rgb", device, show,
                           rgb_input=True)
        results["rgb_metrics"] = _scalars(rgb_ft)
        results["rgb_summary"] = {k: v for k, v in rgb_ft.items() if k != "per_sequence"}
        rgb_summaries = {f"{cfg.method} ([rgb, rgb])": rgb_ft}
        if cfg.evaluate_baseline:
            rgb_base = _evaluate(rgb_model, rgb_test, output_dir / "tracking_results" / "rgb_baseline_rgb", device,
                                 show, rgb_input=True)
            results["baseline_rgb_metrics"] = _scalars(rgb_base)
            rgb_summaries["RGB tracker"] = rgb_base
        plots = plot_summaries(rgb_summaries, output_dir / "plots", prefix="rgb_")
        results["plots"].update({f"rgb_{k}": str(v) for k, v in plots.items()})
    results["summary"] = summary
    results = _jsonable(results)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _save_checkpoint(accelerator: Any, output_dir: Path, step: int, keep: int) -> Path:
    folder = output_dir / "checkpoints" / f"step_{step:06d}"
    accelerator.save_state(str(folder))
    if accelerator.is_main_process:
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}) + "\n")
        if keep > 0:
            for _, old in _checkpoints(output_dir / "checkpoints")[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


# ----------------------------------------------------------------------------------------------------------------------
# Reporting and the command line of the examples
# ----------------------------------------------------------------------------------------------------------------------
def format_results_table(results: dict[str, Any]) -> str:
    """The tracking metrics of :func:`finetune_rgbx` results as a small text table (values in %)."""
    rows = []
    if "baseline_metrics" in results:
        rows.append(("RGB tracker (before fine-tuning)", "RGB-X test", results["baseline_metrics"]))
    rows.append((results["method"], "RGB-X test", results["metrics"]))
    if "baseline_rgb_metrics" in results:
        rows.append(("RGB tracker (before fine-tuning)", "RGB test", results["baseline_rgb_metrics"]))
    if "rgb_metrics" in results:
        rows.append((f"{results['method']} on [rgb, rgb]", "RGB test", results["rgb_metrics"]))
    keys = [k for k in _SCALARS if k != "fps" and any(k in r[2] for r in rows)]
    header = ["model", "test set", *keys]
    cells = [header] + [[name, split, *(f"{100 * m[k]:.1f}" if m.get(k) is not None else "-" for k in keys)]
                        for name, split, m in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser(modality: str = "rgbt", description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``examples/finetune_rgb{t,d,e}.py``: one flag per :class:`FinetuneConfig` field."""
    parser = argparse.ArgumentParser(description=description or f"Fine-tune an RGB tracker on {modality.upper()} "
                                     "data (SRFT and baselines) and evaluate it.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = FinetuneConfig(modality=modality, output_dir=f"outputs/finetune_{modality}")
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in ("modality", "srft_overrides"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "default": default}
        if f.name == "method":
            kwargs["choices"] = METHODS
        if f.name == "mixed_precision":
            kwargs["choices"] = ("no", "bf16", "fp16")
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "resume":
            kwargs.update(nargs="?", const="latest")
        else:
            kinds = {"lr": float, "lora_alpha": float, "weight_decay": float, "grad_clip": float,
                     "center_jitter": float, "scale_jitter": float}
            if f.name in kinds:
                kwargs["type"] = kinds[f.name]
            elif isinstance(default, int) or f.name in ("eval_sequences", "eval_frames", "template_size",
                                                         "search_size", "num_threads"):
                kwargs["type"] = int
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--srft", metavar="KEY=VALUE", action="append", type=_parse_override, default=[],
                        help="SRFTConfig field on top of the method's preset, e.g. --srft prior_rank=16 (repeatable).")
    parser.set_defaults(modality=modality)
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)
              if f.name != "srft_overrides" and hasattr(args, f.name)}
    return FinetuneConfig(**values, srft_overrides=dict(args.srft))


def finetune_main(modality: str, argv: SequenceABC[str] | None = None, description: str | None = None) -> dict:
    """Entry point of the examples: parse flags, run :func:`finetune_rgbx`, print the metrics table (main process)."""
    args = build_parser(modality, description).parse_args(argv)
    cfg = config_from_args(args)
    results = finetune_rgbx(cfg)
    if results:
        print()
        print(f"{results['method']} on {results['dataset']} ({results['data']}), {results['steps']} steps "
              f"in {results['train_time_s']:.0f} s on {results['num_processes']} process(es); prior: {results['prior']}")
        print(format_results_table(results))
        out = Path(cfg.output_dir)
        print(f"\nplots: {out / 'plots'}  (success.png, precision.png, norm_precision.png)")
        print(f"results: {out / 'results.json'}   model: {out / 'model'}   logs: tensorboard --logdir {out}")
    return results
