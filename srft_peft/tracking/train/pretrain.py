"""The RGB tracker a fine-tune starts from (:func:`load_pretrained_rgb`: by default the shipped demo tracker), and
RGB pretraining for re-training one (:func:`pretrain_rgb`, cached by :func:`ensure_pretrained_rgb`; the shipped one
is made by ``scripts/pretrain_demo_tracker.py``).

Example:
    >>> from srft_peft.tracking.train import load_pretrained_rgb
    >>> model, source = load_pretrained_rgb(None)  # the shipped demo tracker, checksums verified  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from ..cache import default_cache_dir, file_lock
from ..checkpoint_io import PartialLoadError, load_rgb_checkpoint, load_tracker, save_tracker
from ..datasets import load_dataset
from ..demo_tracker import demo_tracker_recipe, load_demo_rgb_tracker
from ..model import OSTrackRGBX, TrackerConfig
from ..sampling import TrackingPairDataset, collate
from .common import configure_threads, cosine_lr_lambda, pair_loss, progress_bar, set_seed, to_device
from .config import TINY_SIZES, PretrainConfig
from .data import DEMO_RGB, demo_rgb_split, resolve_split_root

__all__ = ["demo_rgb_split", "ensure_pretrained_rgb", "load_pretrained_rgb", "pretrain_rgb"]

TRAINING_VERSION = 2  # part of the cache key of ensure_pretrained_rgb: bump when the pretraining recipe changes


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
            search_size=64)`` (small crops for CPU speed: the demo's targets are small, so a factor-4 search
            region resized to 64 px loses little).
        data_root: training sequences (a folder with ``train/`` or the sequences themselves), read by the
            ``dataset`` loader; default: the ``pretrain`` split of the demo RGB set (demo data v2, built if absent),
            where the shipped demo tracker was trained.
        output_dir: where ``config.json`` / ``model.safetensors`` (and ``pretrain.json``, the recipe) go.
        recipe: steps, batch size, learning rate, ...; ``overrides`` replace its fields.
        num_threads: intra-op CPU threads (``torch.set_num_threads``); default 1 on the CPU unless ``OMP_NUM_THREADS``
            is set.

    Returns:
        ``output_dir``.
    """
    cfg = config or TrackerConfig(variant="tiny", mode="rgb", template_size=TINY_SIZES[0], search_size=TINY_SIZES[1])
    if cfg.mode != "rgb":
        raise ValueError(f"pretrain_rgb trains an RGB tracker; got mode={cfg.mode!r}")
    recipe = dataclasses.replace(recipe or PretrainConfig(), **overrides)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_threads(num_threads, dev)
    if data_root is None:
        seqs = demo_rgb_split("train")
    else:
        root = Path(data_root).expanduser()
        with contextlib.suppress(FileNotFoundError):
            root = resolve_split_root(root, "train")
        seqs = load_dataset(dataset, root)
    set_seed(recipe.seed)
    model = OSTrackRGBX(cfg).to(dev).train()
    total = recipe.steps * recipe.batch_size
    data = TrackingPairDataset(seqs, samples_per_epoch=total, template_size=cfg.template_size,
                               search_size=cfg.search_size, rgb_only=True, seed=recipe.seed,
                               center_jitter=recipe.center_jitter, scale_jitter=recipe.scale_jitter)
    loader = DataLoader(data, batch_size=recipe.batch_size, shuffle=False, drop_last=True, collate_fn=collate,
                        num_workers=recipe.num_workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(recipe.warmup_steps, recipe.steps))
    bar = progress_bar(total=recipe.steps, enabled=progress, desc="RGB pretraining", unit="step")
    running = None
    for batch in loader:
        batch = to_device(batch, dev)
        loss = pair_loss(model, batch)
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
         "data_root": str(data_root) if data_root is not None else f"demo:v{DEMO_RGB['version']}/rgb/pretrain",
         "final_loss": running}, indent=2) + "\n")
    return out


def ensure_pretrained_rgb(
    cache_dir: str | Path | None = None,
    config: TrackerConfig | None = None,
    recipe: PretrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """A re-trained demo RGB tracker, trained by :func:`pretrain_rgb` on the demo RGB set's ``pretrain`` split when
    absent from the cache (a fine-tune starts from the shipped tracker unless given this folder as ``pretrained``).

    The folder name holds a hash of the tracker config, the recipe and the demo data parameters, so a change of any
    of them trains a new one; a file lock makes concurrent processes (``accelerate launch``) train it once. Training is
    seeded; float results can still differ slightly between machines and thread counts, which is why the demo starts
    from the shipped tracker instead.

    Returns:
        The tracker folder (``load_tracker`` reads it), ``<cache_dir>/pretrained/rgb-<variant>-z<T>-x<S>-<hash>``.
    """
    cfg = config or TrackerConfig(variant="tiny", mode="rgb", template_size=TINY_SIZES[0], search_size=TINY_SIZES[1])
    recipe = recipe or PretrainConfig()
    key = json.dumps({"tracker": cfg.to_dict(), "recipe": dataclasses.asdict(recipe), "data": DEMO_RGB,
                      "training": TRAINING_VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "pretrained"
    folder = base / f"rgb-{cfg.variant}-z{cfg.template_size}-x{cfg.search_size}-{digest}"
    with file_lock(base / f".{folder.name}.lock"):
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
    preset: str | None = None,
) -> tuple[OSTrackRGBX, str]:
    """The RGB tracker to start from, and a description of where it came from.

    ``pretrained``: None (the shipped demo tracker, :func:`~srft_peft.tracking.load_demo_rgb_tracker`, checksums
    verified; described as ``"demo:shipped (sha256 <weights sha256>)"``; nothing is trained), a folder written by
    :func:`save_tracker`, or an OSTrack/DropTrack checkpoint file (``.pth.tar``/``.pth``) loaded into
    ``TrackerConfig(variant, "rgb", template_size, search_size)`` with :func:`load_rgb_checkpoint` (sizes default to
    OSTrack-256's 128/256 for ``small``/``base`` and to 32/64 for ``tiny``). A checkpoint with missing, unexpected or
    mismatched keys is an error (``ValueError`` naming the file, counts and examples) unless ``allow_partial_load``;
    keys the tracker never uses (cls token, ``pos_embed``, classifier head) are not counted. ``preset`` (e.g.
    ``"ostrack256_ce"``, see :meth:`TrackerConfig.from_preset`) replaces ``variant`` and the sizes for a checkpoint
    file, candidate elimination included.
    """
    if pretrained is None:
        return load_demo_rgb_tracker(), f"demo:shipped (sha256 {demo_tracker_recipe()['sha256']})"
    path = Path(pretrained).expanduser()
    if path.is_dir():
        model = load_tracker(path)
        if model.config.mode != "rgb":
            raise ValueError(f"{path} holds a {model.config.mode!r} tracker; fine-tuning starts from an RGB one")
        return model, str(path)
    if path.is_file():
        if preset is not None:
            cfg = TrackerConfig.from_preset(preset, mode="rgb")
        else:
            default = TINY_SIZES if variant == "tiny" else (128, 256)
            cfg = TrackerConfig(variant=variant, mode="rgb", template_size=template_size or default[0],
                                search_size=search_size or default[1])
        model = OSTrackRGBX(cfg)
        try:
            report = load_rgb_checkpoint(model, path, strict=not allow_partial_load)
        except PartialLoadError as err:
            raise PartialLoadError(f"--pretrained: {err}. Check --tracker-preset or --variant / --template-size / "
                                   "--search-size, or pass --allow-partial-load to train from a partial load") from None
        if not report.ok:
            warnings.warn(f"--allow-partial-load: {report.summary()}", stacklevel=2)
        return model, str(path)
    raise FileNotFoundError(f"--pretrained {pretrained!r} is neither a tracker folder nor a checkpoint file")

