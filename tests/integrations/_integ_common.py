"""Shared pieces of the integration tests and of the scripts they launch in other processes.

Tiny models built from configs (no downloads), data that depends only on (step, index) so any process can rebuild any
batch, and one accelerate training loop used by single- and multi-process runs alike.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from srft_peft import SRFTConfig, get_srft_model  # noqa: E402

IMAGE = 16
NUM_LABELS = 3
#: The resume test's SRFT settings: rank-mode damping refreshed every 2 steps and own statistics, so an exact resume
#: needs the saved v, ranks, anchors, prior and step.
RESUME_CONFIG = dict(transfer_mode="rank", rank_interval=2, total_steps=8)


def tiny_hf_vit(seed: int = 0, initializer_range: float = 0.02) -> torch.nn.Module:
    """A tiny Hugging Face ``ViTForImageClassification`` (16 px, hidden 32, 2 layers) built from a config; the timm
    counterpart is the ``tiny_vit`` fixture of tests/conftest.py."""
    import transformers

    torch.manual_seed(seed)
    # no q/k/v biases: the key bias has an exactly-zero gradient (softmax shift invariance), which Adam turns into
    # steps of the size of the learning rate from rounding noise, and would make run-to-run comparisons meaningless
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    image_size=IMAGE, patch_size=8, num_labels=NUM_LABELS, hidden_dropout_prob=0.0,
                                    attention_probs_dropout_prob=0.0, initializer_range=initializer_range,
                                    qkv_bias=False)
    return transformers.ViTForImageClassification(config)


def examples(step: int, indices: range | list[int], salt: int = 0) -> dict[str, torch.Tensor]:
    """Examples ``indices`` of training step ``step``: each example depends only on (salt, step, index)."""
    xs, ys = [], []
    for i in indices:
        g = torch.Generator().manual_seed(1_000_003 * salt + 1009 * step + i)
        xs.append(torch.randn(3, IMAGE, IMAGE, generator=g))
        ys.append(int(torch.randint(0, NUM_LABELS, (1,), generator=g)))
    return {"pixel_values": torch.stack(xs), "labels": torch.tensor(ys)}


def calibration_batches(num: int = 4, size: int = 4, salt: int = 7) -> list[dict[str, torch.Tensor]]:
    return [examples(b, range(size), salt=salt) for b in range(num)]


def srft_config(apply: str = "grad", total_steps: int = 6, **overrides: Any) -> SRFTConfig:
    fields = dict(prior_rank=4, total_steps=total_steps, lambda_prior=200.0, lambda_transfer=1.0, apply=apply,
                  transfer_statistics="own", kappa_end=0.3)
    fields.update(overrides)
    return SRFTConfig(**fields)


def make_hf_srft(apply: str = "grad", seed: int = 0, estimate: bool = True, initializer_range: float = 0.02,
                 **overrides: Any):
    """:func:`tiny_hf_vit` under SRFT, its prior estimated on :func:`calibration_batches` unless ``estimate=False``
    (the Tiny-MLP counterpart for checkpoint tests is ``checkpoint_helpers.make_srft``)."""
    srft = get_srft_model(tiny_hf_vit(seed, initializer_range), srft_config(apply, **overrides))
    if estimate:
        srft.estimate_prior(calibration_batches(), progress=False)
    return srft


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])


def engine_state(srft: Any) -> dict[str, torch.Tensor]:
    """The SRFT training state as flat tensors (step included as a tensor)."""
    state = srft.srft_state_dict()
    out = {f"tensors.{k}": v.detach().clone() for k, v in state["tensors"].items()}
    out["step"] = torch.tensor(state["step"])
    return out


def train_accelerate(accelerator: Any, srft: Any, steps: int, global_batch: int, micro: int,
                     start: int = 0, lr: float = 1e-2, prepare: bool = True, optimizer: Any = None,
                     scheduler: Any = None, total_steps: Optional[int] = None, checkpoint: bool = True,
                     after_prepare: Any = None, stop_after: Optional[int] = None) -> tuple[Any, Any, Any]:
    """Optimizer steps ``start..steps-1`` with accelerate: each process takes its contiguous share of the global batch
    of every step, split into micro-batches of ``micro`` under ``accelerator.accumulate``.

    Returns (prepared model, prepared optimizer, prepared scheduler)."""
    from srft_peft.integrations.accelerate import prepare_srft

    world, rank = accelerator.num_processes, accelerator.process_index
    local = global_batch // world
    if accelerator.gradient_accumulation_steps != math.ceil(local / micro):
        raise ValueError("gradient_accumulation_steps must equal the number of micro-batches")
    if optimizer is None:
        optimizer = torch.optim.AdamW(srft.parameters(), lr=lr, weight_decay=0.0)
    if scheduler == "lambda":  # (accelerate steps a prepared scheduler once per process: single-process runs only)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.1 * s))
    if scheduler is None:
        model, optimizer = accelerator.prepare(srft, optimizer)
    else:
        model, optimizer, scheduler = accelerator.prepare(srft, optimizer, scheduler)
    prepare_srft(accelerator, model, optimizer, total_steps or srft.srft_config.total_steps, checkpoint=checkpoint)
    if after_prepare is not None:
        after_prepare(model, optimizer, scheduler)
    model.train()
    for step in range(start, steps if stop_after is None else stop_after):
        for m in range(0, local, micro):
            first = rank * local + m
            batch = examples(step, range(first, first + micro))
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    out = model(**batch)
                accelerator.backward(out.loss)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                optimizer.zero_grad()
    return model, optimizer, scheduler
