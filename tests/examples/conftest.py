"""Fixtures of the example tests: tiny demo sets and a tiny RGB tracker in a temporary folder, nothing in ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Demo RGB-T / RGB-D / RGB-E sets (2 train, 1 test sequence of 12 frames), an RGB set and a 3-step RGB tracker."""
    from srft_peft.tracking.demo_data import make_demo_dataset
    from srft_peft.tracking.train import PretrainConfig, pretrain_rgb

    root = tmp_path_factory.mktemp("examples")
    paths = {m: make_demo_dataset(root / m, modality=m, num_train=2, num_test=1, frames=12) for m in
             ("rgbt", "rgbd", "rgbe")}
    paths["rgb"] = make_demo_dataset(root / "rgb", modality="rgb", num_train=2, num_test=1, frames=12, seed=1)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        paths["tracker"] = pretrain_rgb(None, paths["rgb"], root / "rgb_tracker",
                                        PretrainConfig(steps=3, batch_size=4, warmup_steps=0), progress=False)
    finally:
        torch.set_num_threads(previous)
    paths["root"] = root
    return paths


@pytest.fixture(scope="session")
def example_env(tiny_data) -> dict[str, str]:
    """Environment of the example subprocesses: this checkout first on the path, one thread, caches in tmp."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               SRFT_DEMO_ROOT=str(tiny_data["root"] / "demo_cache"), SRFT_CACHE_DIR=str(tiny_data["root"] / "cache"),
               HF_HUB_OFFLINE="1")
    return env
