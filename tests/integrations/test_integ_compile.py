"""torch.compile: a compiled model wrapped by SRFT, and a compiled SRFTModel, train with the eager numbers."""

from __future__ import annotations

import pytest
import torch
from tolerances import adam_trajectory_tolerance
from torch import nn

from srft_peft import SRFTConfig, get_srft_model

STEPS = 4
# inductor fuses and reorders the float32 reductions (widths <= 16, the batch of 16; fc1, LayerNorm, fc2 and the loss,
# forward and backward: depth 12) of the AdamW run (lr 1e-2)
TRAJECTORY = adam_trajectory_tolerance(16, depth=12, steps=STEPS, lr=1e-2)


class Net(nn.Module):
    """A small model with the Hugging Face convention: returns a dict with ``loss`` when given labels."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.fc2(torch.tanh(self.norm(self.fc1(x))))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


@pytest.fixture(scope="module")
def compile_available():
    try:
        torch._dynamo.reset()
        torch.compile(lambda x: torch.tanh(x) * 2)(torch.ones(3))
    except Exception as error:  # inductor needs a working C++ toolchain on CPU
        pytest.skip(f"torch.compile is unavailable on this build/machine: {type(error).__name__}: {error}")
    yield
    torch._dynamo.reset()


def _data(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"x": torch.randn(16, 8, generator=g), "labels": torch.randint(0, 4, (16,), generator=g)}


def _run(apply: str, compile_what: str | None) -> torch.Tensor:
    torch.manual_seed(0)
    net = Net()
    config = SRFTConfig(prior_rank=4, total_steps=STEPS, lambda_prior=50.0, kappa_end=0.3, apply=apply,
                        target_modules=["fc1", "norm", "fc2"])
    srft = get_srft_model(torch.compile(net) if compile_what == "base" else net, config)
    srft.estimate_prior([_data(100), _data(101)], progress=False)  # through the compiled model: runs it eagerly
    model = torch.compile(srft) if compile_what == "wrapper" else srft
    optimizer = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0)
    srft.attach(optimizer)
    for step in range(STEPS):
        # after the first step a recompilation would mean the penalty (lambda_p(t) changes every step) is traced
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            model(**_data(step))["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert srft.step == STEPS
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


@pytest.mark.parametrize("apply", ["grad", "loss"])
def test_compiled_model_wrapped_by_srft_trains_like_eager(compile_available, apply):
    eager = _run(apply, None)
    compiled = _run(apply, "base")
    torch.testing.assert_close(compiled, eager, **TRAJECTORY)
    assert (eager - _run(apply, None)).abs().max() == 0  # eager itself is deterministic


def test_compiled_srft_model_trains_like_eager(compile_available):
    eager = _run("loss", None)
    compiled = _run("loss", "wrapper")
    torch.testing.assert_close(compiled, eager, **TRAJECTORY)
