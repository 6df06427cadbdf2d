"""Shared fixtures: tiny models built from configs (no downloads) and deterministic data."""

import pytest
import torch
from torch import nn

# The test models are tiny: one intra-op thread is faster than two and keeps timings stable on a shared 2-core box.
torch.set_num_threads(1)


class TokenMLP(nn.Module):
    """A tiny token model: Linear -> LayerNorm -> tanh -> Linear, plus a free positional parameter."""

    def __init__(self, d_in: int = 4, d_hidden: int = 6, d_out: int = 3, tokens: int = 5) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(tokens, d_in) * 0.1)
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.norm = nn.LayerNorm(d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x + self.pos))))


@pytest.fixture
def token_mlp() -> TokenMLP:
    torch.manual_seed(0)
    return TokenMLP()


@pytest.fixture
def token_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(3, 5, 4, generator=g) for _ in range(2)]


def _tiny_timm_vit(num_classes: int = 5, depth: int = 2) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=32,
                             patch_size=8, depth=depth)


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide singletons (``AcceleratorState``, ``GradientState``); Trainer and every
    ``Accelerator`` create them once per process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def accelerate_state():
    """A fresh accelerate state around the test, one intra-op thread; yields :func:`reset_accelerate_state` for runs
    that need a fresh state again inside the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reset_accelerate_state()
    yield reset_accelerate_state
    reset_accelerate_state()
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_vit():
    """Factory of tiny timm ViTs (32 px, patch 8, embed 192) built without weights."""
    return _tiny_timm_vit


@pytest.fixture
def target():
    """A Tiny model under SRFT with its own prior, trained two steps and holding v: the state that bad inputs and bad
    loads must not touch (tests/checkpoint_helpers.py)."""
    from checkpoint_helpers import make_srft

    return make_srft("kfac", data_seed=5, train_steps=2)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory):
    """A significance checkpoint folder (with transfer state) of a trained Tiny model, written once per module."""
    from checkpoint_helpers import make_srft

    folder = tmp_path_factory.mktemp("saved")
    make_srft("kfac", train_steps=1).save_pretrained(folder, include_transfer_state=True)
    return folder
