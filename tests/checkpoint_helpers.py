"""Tiny models, priors, Hub-cache layouts and "nothing changed" checks shared by the checkpoint, hub, CLI and
bad-input tests."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from srft_peft import SRFTConfig, SRFTModel, get_srft_model
from srft_peft.checkpoint import CONFIG_NAME, significance_path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Tiny(nn.Module):
    """Linear (K-FAC), LayerNorm and biases (per-example diagonal), a free added parameter (per-example too), a head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.pos = nn.Parameter(0.1 * torch.randn(width))
        self.fc1 = nn.Linear(6, width)
        self.norm = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.fc1(x) + self.pos))
        return self.head(torch.tanh(self.fc2(h)))


def tiny(seed: int = 0, width: int = 8) -> Tiny:
    torch.manual_seed(seed)
    return Tiny(width)


def batches(seed: int = 1, n: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 6, generator=g) for _ in range(n)]


def make_srft(estimator: str = "kfac", seed: int = 0, width: int = 8, train_steps: int = 0, data_seed: int = 1,
              optimizer: str = "sgd", **config: Any) -> SRFTModel:
    """A Tiny model under SRFT with an estimated prior, optionally trained a few steps (SGD: own statistics v)."""
    cfg = SRFTConfig(prior_estimator=estimator, prior_rank=3, total_steps=20, **config)
    srft = get_srft_model(tiny(seed, width), cfg)
    srft.estimate_prior(batches(data_seed), progress=False)
    return train_(srft, train_steps, optimizer)


def lora_srft(seed: int = 0, rank: int = 2, train_steps: int = 0) -> SRFTModel:
    """SRFT on a peft LoRA model of :func:`tiny` (adapters on fc1/fc2), with a prior, optionally trained (SGD)."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny(seed), peft.LoraConfig(r=rank, lora_alpha=4, target_modules=["fc1", "fc2"],
                                                             lora_dropout=0.0))
    srft = get_srft_model(model, SRFTConfig(prior_rank=3, total_steps=20))
    srft.estimate_prior(batches(seed + 1), progress=False)
    return train_(srft, train_steps)


def train_(srft: SRFTModel, steps: int, optimizer: str = "sgd") -> SRFTModel:
    """``steps`` attached optimizer steps on a fixed stream of batches (SGD: own statistics v), then detach."""
    if steps:
        opt = (torch.optim.SGD(srft.parameters(), lr=0.05) if optimizer == "sgd"
               else torch.optim.Adam(srft.parameters(), lr=1e-2))
        srft.attach(opt)
        for x in batches(seed=7, n=steps):
            opt.zero_grad()
            srft(x).pow(2).mean().backward()
            opt.step()
        srft.detach()
    return srft


def perturb_(module: nn.Module, seed: int = 3, scale: float = 0.05) -> None:
    """Add the same pseudo-random offset to every parameter (identical across models of one architecture)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def hub_cache(cache_dir: Path, repo_id: str, folder: Path, commit: str = COMMIT) -> Path:
    """Lay ``folder``'s files out as the Hugging Face cache holds a downloaded model repo (refs/main -> snapshot)."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        shutil.copy(f, snapshot / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def rewrite_json(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        meta = json.loads((folder / CONFIG_NAME).read_text())
        edit(meta)
        (folder / CONFIG_NAME).write_text(json.dumps(meta))
    return apply


def rewrite_tensors(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        tensors = load_file(significance_path(folder))
        edit(tensors)
        save_file(tensors, significance_path(folder))
    return apply


def snapshot(srft: SRFTModel) -> dict:
    return {"prior": srft.prior, "penalty": srft.prior_penalty().detach(), "state": srft.srft_state_dict(),
            "config": dataclasses.replace(srft.srft_config),
            "weights": {k: v.clone() for k, v in srft.base_model.state_dict().items()}}


def assert_unchanged(srft: SRFTModel, before: dict) -> None:
    after = snapshot(srft)
    assert after["prior"] is before["prior"]
    assert torch.equal(after["penalty"], before["penalty"]) and float(before["penalty"]) > 0
    assert after["config"] == before["config"]
    for key in ("step", "total_steps", "statistics"):
        assert after["state"][key] == before["state"][key]
    assert after["state"]["tensors"].keys() == before["state"]["tensors"].keys()
    for key, t in before["state"]["tensors"].items():
        assert torch.equal(after["state"]["tensors"][key], t), key
    for key, t in before["weights"].items():
        assert torch.equal(after["weights"][key], t), key


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): compared before and after to show nothing was written."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
