"""The sequences of a fine-tune: the RGB-X train / validation / test splits of a dataset root (or the demo set), and
RGB-only splits (prior calibration, RGB-skill retention).

The demo sets are demo data v2 (:data:`DEMO_DATA_VERSION`): RGB-X ``train`` / ``val`` / ``test`` for the fine-tune,
and the RGB set's ``pretrain`` / ``val`` / ``retention`` for the RGB side (:func:`demo_rgb_split`); version 1 stays
available through :func:`~srft_peft.tracking.demo_data.make_demo_dataset`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..datasets import Sequence, load_dataset
from ..demo_data import DEMO_LAYOUTS, demo_set_root, make_demo_dataset

if TYPE_CHECKING:
    from .config import FinetuneConfig

__all__ = ["DEMO_DATA_VERSION", "default_num_workers", "make_loader",
           "DEMO_RGB", "DEMO_RGB_SPLITS", "SPLIT_FOLDERS", "RGBXSplits", "demo_rgb_root",
           "demo_rgb_split", "load_rgb_split", "load_rgbx_splits", "resolve_split_root", "split_off_validation",
           "truncate_sequence"]

DEMO_DATA_VERSION = 2  # the demo data of a fine-tune without a data root, and of its RGB side with the demo tracker
# The demo RGB set (make_demo_dataset parameters): where the shipped demo tracker was pretrained (pretrain), chosen (val)
# and scored (retention); the fine-tune calibrates its prior on pretrain and tests retention on retention.
DEMO_RGB = {"modality": "rgb", "version": DEMO_DATA_VERSION, "seed": 0}
DEMO_RGB_SPLITS = {"train": "pretrain", "val": "val", "test": "retention"}  # fine-tune role -> folder of the RGB set

# Folder names of the splits under a dataset root, tried in this order. The demo data v2 RGB set names its prior /
# retention splits pretrain/ and retention/; they are the last choices of "train" / "test".
SPLIT_FOLDERS = {
    "train": ("train", "trainingset", "TrainingSet/trainingset", "TrainingSet", "train_subset", "training", "Train",
              "pretrain"),
    "val": ("val", "validation", "valset", "val_subset", "Val", "Validation"),
    "test": ("test", "testingset", "TestingSet/testingset", "TestingSet", "test_subset", "testing", "Test",
             "retention"),
}


@dataclass
class RGBXSplits:
    """The RGB-X sequences of a fine-tune; ``val`` is empty when the data has no validation split."""

    train: list[Sequence]
    val: list[Sequence]
    test: list[Sequence]
    description: str


def resolve_split_root(root: str | Path, split: str) -> Path:
    """The folder of ``split`` ("train" / "val" / "test") under a dataset root (see :data:`SPLIT_FOLDERS`).

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


def truncate_sequence(seq: Sequence, frames: int | None) -> Sequence:
    """The first ``frames`` frames of ``seq`` (``seq`` itself when None or longer than it)."""
    if frames is None or frames >= len(seq):
        return seq
    return Sequence(
        seq.name, seq.frames_rgb[:frames], seq.frames_x[:frames], seq.gt[:frames], visible=seq.visible[:frames],
        gt_x=None if seq.gt_x is None else seq.gt_x[:frames], modality=seq.modality, dataset=seq.dataset,
        init_box=seq.init_box,
    )


def load_rgb_split(rgb_root: str | Path, split: str) -> list[Sequence]:
    """RGB-only sequences of ``split`` under ``rgb_root`` (or ``rgb_root``'s sequences themselves)."""
    root = Path(rgb_root).expanduser()
    with contextlib.suppress(FileNotFoundError):
        root = resolve_split_root(root, split)
    return load_dataset("rgb", root)


def demo_rgb_root() -> Path:
    """The demo RGB set :data:`DEMO_RGB` (built under ``demo_set_root("rgb", version)`` if absent)."""
    return make_demo_dataset(demo_set_root("rgb", DEMO_RGB["version"]), **DEMO_RGB)


def demo_rgb_split(split: str) -> list[Sequence]:
    """RGB sequences of the demo RGB set for ``split``: "train" (its ``pretrain`` folder: RGB pretraining and the
    prior's calibration), "val" (its ``val`` folder) or "test" (its ``retention`` folder: the RGB-retention test)."""
    if split not in DEMO_RGB_SPLITS:
        raise ValueError(f"split must be one of {sorted(DEMO_RGB_SPLITS)}, got {split!r}")
    return load_dataset("rgb", demo_rgb_root() / DEMO_RGB_SPLITS[split])


def _optional_split(root: Path, loader: str) -> list[Sequence]:
    try:
        return load_dataset(loader, resolve_split_root(root, "val"))
    except FileNotFoundError:
        return []


def split_off_validation(train: list[Sequence], count: int) -> tuple[list[Sequence], list[Sequence]]:
    """``count`` validation sequences taken out of ``train``: evenly spaced in the name-sorted list (positions
    ``floor((i + 1/2) n / count)``), so the choice depends on the names only; returns ``(train_rest, val)``.

    Example:
        >>> import numpy as np
        >>> seqs = [Sequence(f"s{i}", ["f"], [], np.ones((1, 4)), modality="rgb") for i in range(6)]
        >>> rest, val = split_off_validation(seqs, 2)
        >>> [s.name for s in val], len(rest)
        (['s1', 's4'], 4)
    """
    ordered = sorted(train, key=lambda s: s.name)
    if not 0 < count < len(ordered):
        raise ValueError(f"val_from_train must be between 1 and {len(ordered) - 1} (the training set has "
                         f"{len(ordered)} sequences), got {count}")
    picked = {ordered[(2 * i + 1) * len(ordered) // (2 * count)].name for i in range(count)}
    return [s for s in train if s.name not in picked], [s for s in ordered if s.name in picked]


def load_rgbx_splits(cfg: FinetuneConfig) -> RGBXSplits:
    """The train / validation / test sequences of ``cfg`` (the demo data v2 set of the modality, built if needed,
    when no root is given). Validation: ``cfg.val_from_train`` sequences taken out of the training set
    (:func:`split_off_validation`), else ``cfg.val_root``, else the ``val`` split under the data root when there is
    one. The test set is read with ``cfg.test_dataset_name``'s loader."""
    splits = _load_rgbx_splits(cfg)
    if cfg.val_from_train:
        train, val = split_off_validation(splits.train, cfg.val_from_train)
        return RGBXSplits(train, val, splits.test, splits.description)
    return splits


def _load_rgbx_splits(cfg: FinetuneConfig) -> RGBXSplits:
    if cfg.data_root is None and cfg.train_root is None and cfg.test_root is None:
        root = make_demo_dataset(demo_set_root(cfg.modality, DEMO_DATA_VERSION), modality=cfg.modality,
                                 version=DEMO_DATA_VERSION)
        layout = DEMO_LAYOUTS[cfg.modality]
        val = load_dataset(layout, Path(cfg.val_root).expanduser()) if cfg.val_root else _optional_split(root, layout)
        return RGBXSplits(load_dataset(layout, root / "train"), val, load_dataset(layout, root / "test"),
                          f"demo v{DEMO_DATA_VERSION}:{root}")
    name = cfg.dataset_name
    splits = []
    for split, explicit, split_file, loader in (("train", cfg.train_root, cfg.train_split_file, name),
                                                ("test", cfg.test_root, cfg.test_split_file, cfg.test_dataset_name)):
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
        splits.append(load_dataset(loader, root, **kwargs))
    if cfg.val_root is not None:
        val = load_dataset(name, Path(cfg.val_root).expanduser())
    else:
        val = _optional_split(Path(cfg.data_root).expanduser(), name) if cfg.data_root is not None else []
    return RGBXSplits(splits[0], val, splits[1], str(cfg.data_root or cfg.train_root))


def default_num_workers(device: torch.device | str, local_processes: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers per training process when ``num_workers`` is None: ``min(8, cpus // local_processes)`` with
    an accelerator (a pair costs about four JPEG decodes of CPU time, so a GPU needs several cores feeding it), 0 on
    the CPU, where the training step itself uses the cores.

    Example:
        >>> default_num_workers("cuda", local_processes=4, cpus=16), default_num_workers("cpu", cpus=16)
        (4, 0)
    """
    if torch.device(device).type == "cpu":
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cpus // max(int(local_processes), 1))


def make_loader(data: Dataset, cfg: FinetuneConfig, device: torch.device | str, collate_fn: Callable[..., Any],
                local_processes: int = 1, drop_last: bool = False) -> DataLoader:
    """The DataLoader of a fine-tune: ``cfg.batch_size`` in dataset order (item ``i`` is seeded by ``i``, so the pairs
    do not depend on the number of workers, and a resumed run skips exactly the batches already used), workers
    ``cfg.num_workers`` (None: :func:`default_num_workers`), pinned memory on CUDA, persistent workers with
    ``cfg.prefetch_factor`` batches ahead when there are workers."""
    workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(device, local_processes)
    extra = {"persistent_workers": True, "prefetch_factor": cfg.prefetch_factor} if workers > 0 else {}
    return DataLoader(data, batch_size=cfg.batch_size, shuffle=False, drop_last=drop_last, collate_fn=collate_fn,
                      num_workers=workers, pin_memory=torch.device(device).type == "cuda", **extra)
