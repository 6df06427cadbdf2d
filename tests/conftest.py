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


@pytest.fixture
def tiny_vit():
    """Factory of tiny timm ViTs (32 px, patch 8, embed 192) built without weights."""
    return _tiny_timm_vit
