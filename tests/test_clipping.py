"""Gradient clipping and the prior gradient: `SRFTModel.add_prior_gradient` lets clipping see lambda_p(t) grad R_prior,
exactly once per optimizer step, as `apply="loss"` does; without it the hook adds the prior gradient after clipping."""

from __future__ import annotations

import copy
from typing import Optional

import pytest
import torch
from engine_helpers import prior_lambda, state_tensor
from tolerances import assert_close32

from srft_peft import SRFTConfig, get_srft_model

CLIP = 0.05  # well below the task gradient's norm (checked below), so clipping is active on every step


def make(model: torch.nn.Module, batches: list[torch.Tensor], apply: str, prior: bool = True, **cfg):
    srft = get_srft_model(copy.deepcopy(model), SRFTConfig(**{
        "target_modules": None, "prior_rank": 3, "total_steps": 8, "lambda_prior": 5.0, "apply": apply,
        "transfer_statistics": "own", **cfg}))
    if prior:
        srft.estimate_prior(batches, progress=False)
    return srft


def task_loss(srft, x: torch.Tensor) -> torch.Tensor:
    loss = (srft(x) - 1.0).pow(2).mean()
    return loss + srft.srft_loss() if srft.srft_config.apply == "loss" else loss


def train(srft, batches, calls: tuple[str, ...] = (), steps: int = 5, micro: int = 1, clip: Optional[float] = CLIP,
          scaler: Optional[torch.amp.GradScaler] = None, poison_at: Optional[int] = None, set_to_none: bool = True,
          fused: bool = False) -> dict:
    """A plain loop; ``calls`` says where `add_prior_gradient` runs: "micro" (after each micro-batch's backward),
    "last" (after the last backward), "unscaled" (after ``scaler.unscale_``), "clipped" (after clipping)."""
    opt = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0, fused=fused)
    srft.attach(opt)
    norms = []
    for step in range(steps):
        for m in range(micro):
            loss = task_loss(srft, batches[(step * micro + m) % len(batches)]) / micro
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if "micro" in calls:
                srft.add_prior_gradient(scaler)
        if step == poison_at:
            srft.base_model.fc1.weight.grad[0, 0] = float("inf")
        if "last" in calls:
            srft.add_prior_gradient(scaler)
        if scaler is not None and clip is not None:
            scaler.unscale_(opt)
        if "unscaled" in calls:
            srft.add_prior_gradient(scaler)
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(srft.parameters(), clip)))
        if "clipped" in calls:
            srft.add_prior_gradient(scaler)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=set_to_none)
    params = torch.cat([p.detach().reshape(-1) for p in srft.parameters()])
    return {"params": params, "v": state_tensor(srft, "transfer.v"), "step": srft.step, "norms": norms}


def assert_same(a: dict, b: dict, exact: bool = False) -> None:
    assert a["step"] == b["step"]
    for key in ("params", "v"):
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            # float32, two kernel paths (autograd of the penalty in the loss vs the engine's fused prior gradient;
            # the clip's norm sums all 83 weights): a gradient's rounding, carried through <= 8 AdamW steps
            assert_close32(a[key], b[key], reduction_size=83, depth=8, msg=key)


def differ(a: dict, b: dict) -> float:
    return float((a["params"] - b["params"]).abs().max())


# --- (a) the order of clipping and the prior gradient ----------------------------------------------------------------
@pytest.mark.parametrize("transfer_mode", ["value", "rank"])
def test_prior_gradient_before_clipping_equals_loss_mode(token_mlp, token_batches, transfer_mode):
    loss_mode = train(make(token_mlp, token_batches, "loss", transfer_mode=transfer_mode), token_batches)
    before = train(make(token_mlp, token_batches, "grad", transfer_mode=transfer_mode), token_batches, ("last",))
    after = train(make(token_mlp, token_batches, "grad", transfer_mode=transfer_mode), token_batches)
    assert min(loss_mode["norms"]) > 4 * CLIP  # the clip acts on every step
    assert_same(before, loss_mode)  # weights and the transfer statistics v: the same clipped gradient
    # the default (hook after clipping) stays as it was: the prior gradient escapes the clip, a different update
    assert differ(after, loss_mode) > 1e-3


# --- (b) exactly once per optimizer step ------------------------------------------------------------------------------
def test_added_once_per_step_and_repeated_calls_add_nothing(token_mlp, token_batches):
    hook = train(make(token_mlp, token_batches, "grad"), token_batches, clip=None)
    once = train(make(token_mlp, token_batches, "grad"), token_batches, ("last",), clip=None)
    assert_same(once, hook, exact=True)  # the hook did not add it a second time
    clipped = train(make(token_mlp, token_batches, "grad"), token_batches, ("last",))
    repeated = train(make(token_mlp, token_batches, "grad"), token_batches, ("last", "unscaled", "clipped"))
    assert_same(repeated, clipped, exact=True)  # idempotent within a step, also after clipping


def test_each_step_gets_its_own_prior_gradient(token_mlp, token_batches):
    srft = make(token_mlp, token_batches, "grad")
    opt = torch.optim.SGD(srft.parameters(), lr=0.5)
    srft.attach(opt)
    for _ in range(2):  # move away from the anchor, where grad R_prior = 0
        task_loss(srft, token_batches[0]).backward()
        opt.step()
        opt.zero_grad()
    task_loss(srft, token_batches[0]).backward()
    task = srft.base_model.fc1.weight.grad.clone()
    srft.add_prior_gradient()
    expected = task + prior_lambda(srft) * torch.autograd.grad(srft.prior_penalty(), srft.base_model.fc1.weight)[0]
    # float32: the fused prior gradient vs autograd of the penalty, products over widths <= 6 and rank 3, 3 deep
    assert_close32(srft.base_model.fc1.weight.grad, expected, reduction_size=6, depth=3)
    assert not torch.allclose(expected, task)


# --- (c) gradient accumulation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("calls", [("last",), ("micro",)], ids=["after-last-backward", "after-every-backward"])
def test_accumulation_counts_the_prior_gradient_once(token_mlp, token_batches, calls):
    loss_mode = train(make(token_mlp, token_batches, "loss"), token_batches, micro=2)
    grad_mode = train(make(token_mlp, token_batches, "grad"), token_batches, calls, micro=2)
    assert_same(grad_mode, loss_mode)


def test_parameter_with_a_gradient_only_in_a_later_micro_batch_gets_it_once(token_mlp, token_batches):
    srft = make(token_mlp, token_batches, "grad")
    opt = torch.optim.SGD(srft.parameters(), lr=0.5)
    srft.attach(opt)
    task_loss(srft, token_batches[0]).backward()
    opt.step()
    opt.zero_grad()
    pos = srft.base_model.pos
    pos.requires_grad_(False)  # the first micro-batch gives pos no gradient
    task_loss(srft, token_batches[0]).backward()
    srft.add_prior_gradient()
    pos.requires_grad_(True)
    task_loss(srft, token_batches[1]).backward()
    task_pos = pos.grad.clone()
    srft.add_prior_gradient()
    expected = task_pos + prior_lambda(srft) * torch.autograd.grad(srft.prior_penalty(), pos)[0]
    assert_close32(pos.grad, expected, reduction_size=6, depth=3)  # as in test_each_step_gets_its_own_prior_gradient
    fc1 = srft.base_model.fc1.weight.grad.clone()
    srft.add_prior_gradient()
    assert torch.equal(srft.base_model.fc1.weight.grad, fc1)


# --- (d) GradScaler: scaled or unscaled gradients, skipped steps ------------------------------------------------------
def scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10_000)


@pytest.mark.parametrize("calls", [("last",), ("unscaled",)], ids=["scaled", "unscaled"])
def test_grad_scaler_prior_gradient_before_clipping_is_exact(token_mlp, token_batches, calls):
    loss_mode = train(make(token_mlp, token_batches, "loss"), token_batches, scaler=scaler())
    grad_mode = train(make(token_mlp, token_batches, "grad"), token_batches, calls, scaler=scaler())
    assert_same(grad_mode, loss_mode)
    assert_same(grad_mode, train(make(token_mlp, token_batches, "grad"), token_batches, calls))


def test_fused_optimizer_with_scaled_gradients(token_mlp, token_batches):
    """No unscale_: the fused AdamW unscales inside its kernel, so the prior gradient must have been scaled too."""
    loss_mode = train(make(token_mlp, token_batches, "loss"), token_batches, clip=None, scaler=scaler(), fused=True)
    grad_mode = train(make(token_mlp, token_batches, "grad"), token_batches, ("last",), clip=None, scaler=scaler(),
                      fused=True)
    assert_same(grad_mode, loss_mode)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_step_after_a_skipped_step_gets_the_prior_gradient(token_mlp, token_batches, set_to_none):
    loss_mode = train(make(token_mlp, token_batches, "loss"), token_batches, scaler=scaler(), poison_at=2,
                      set_to_none=set_to_none)
    grad_mode = train(make(token_mlp, token_batches, "grad"), token_batches, ("unscaled",), scaler=scaler(),
                      poison_at=2, set_to_none=set_to_none)
    assert loss_mode["step"] == 4  # the scaler skipped step 2
    assert_same(grad_mode, loss_mode)


# --- (e) accelerate -----------------------------------------------------------------------------------------------------
def test_accelerate_clip_grad_norm_after_the_prior_gradient(token_mlp, token_batches):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    def run(apply: str) -> dict:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        srft = make(token_mlp, token_batches, apply)
        opt = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0)
        model, opt = accelerator.prepare(srft, opt)
        srft.attach(opt, accelerator=accelerator)
        for i in range(8):
            with accelerator.accumulate(model):
                accelerator.backward(task_loss(model, token_batches[i % 2]))
                if accelerator.sync_gradients:
                    if apply == "grad":
                        srft.add_prior_gradient(accelerator.scaler)
                    accelerator.clip_grad_norm_(model.parameters(), CLIP)
                opt.step()
                opt.zero_grad()
        params = torch.cat([p.detach().reshape(-1) for p in srft.parameters()])
        return {"params": params, "v": state_tensor(srft, "transfer.v"), "step": srft.step}

    try:
        loss_mode, grad_mode = run("loss"), run("grad")
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert loss_mode["step"] == 4
    assert_same(grad_mode, loss_mode)


# --- (f) misuse ---------------------------------------------------------------------------------------------------------
def grads(srft) -> list[torch.Tensor]:
    return [p.grad.clone() for p in srft.parameters()]


def backward(srft, batches) -> None:
    task_loss(srft, batches[0]).backward()


def test_refused_without_optimizer_or_in_loss_mode(token_mlp, token_batches):
    srft = make(token_mlp, token_batches, "grad")
    with pytest.warns(UserWarning, match="training forward without an attached optimizer"):
        backward(srft, token_batches)
    before = grads(srft)
    with pytest.raises(RuntimeError, match=r"needs an attached optimizer \(call srft.attach"):
        srft.add_prior_gradient()
    assert all(torch.equal(a, p.grad) for a, p in zip(before, srft.parameters()))

    loss_mode = make(token_mlp, token_batches, "loss")
    loss_mode.attach(torch.optim.SGD(loss_mode.parameters(), lr=0.1))
    backward(loss_mode, token_batches)
    before = grads(loss_mode)
    with pytest.raises(RuntimeError, match="is for apply='grad'; with apply='loss' the prior term is already in the loss"):
        loss_mode.add_prior_gradient()
    assert all(torch.equal(a, p.grad) for a, p in zip(before, loss_mode.parameters()))


def test_refused_before_backward_after_scaler_step_and_with_a_wrong_scaler(token_mlp, token_batches):
    srft = make(token_mlp, token_batches, "grad")
    opt = torch.optim.SGD(srft.parameters(), lr=0.1)
    srft.attach(opt)
    with pytest.raises(RuntimeError, match="no regularized parameter has a gradient; call it after the last backward"):
        srft.add_prior_gradient()
    backward(srft, token_batches)
    before = grads(srft)
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler, got float"):
        srft.add_prior_gradient(2.0)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, srft.parameters()))
    s = scaler()
    s.scale(torch.ones(()))  # the scale tensor exists, as after a scaled backward
    s.step(opt)
    before = grads(srft)
    with pytest.raises(RuntimeError, match=r"after scaler.step\(optimizer\) and before scaler.update\(\)"):
        srft.add_prior_gradient(s)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, srft.parameters()))


def test_without_a_prior_there_is_nothing_to_add(token_mlp, token_batches):
    srft = make(token_mlp, token_batches, "grad", prior=False)
    with pytest.warns(UserWarning, match="no prior significance"):
        srft.attach(torch.optim.SGD(srft.parameters(), lr=0.1))
    backward(srft, token_batches)
    before = grads(srft)
    srft.add_prior_gradient()
    assert all(torch.equal(a, p.grad) for a, p in zip(before, srft.parameters()))


def test_non_float32_weights_prior_gradient_before_clipping_equals_loss_mode(token_mlp, token_batches):
    """float64 weights take the float32-copy path (the copy also serves as the step snapshot)."""
    model, batches = token_mlp.double(), [b.double() for b in token_batches]
    loss_mode = train(make(model, batches, "loss"), batches)
    before = train(make(model, batches, "grad"), batches, ("last",))
    assert_same(before, loss_mode)
    assert differ(train(make(model, batches, "grad"), batches), loss_mode) > 1e-3
