"""SRFT under accelerate: two processes, accumulation, mixed precision (bf16 autocast, fp16 GradScaler), exact resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from _integ_common import (
    RESUME_CONFIG,
    ROOT,
    calibration_batches,
    engine_state,
    examples,
    flat_params,
    make_hf_srft,
)
from _integ_common import train_accelerate as train
from tolerances import adam_trajectory_tolerance, assert_close32, float32_rtol

from srft_peft.integrations.accelerate import prepare_srft
from srft_peft.significance.prior import PriorSignificance

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 6
# AdamW runs (lr 1e-2, STEPS steps) of the tiny ViT whose gradients come from other kernels or batch splits: widths
# <= 64, two layers of about 4 chained reductions each, forward and backward (depth 16). Measured: 6e-7, 12x below atol.
TRAJECTORY = adam_trajectory_tolerance(64, depth=16, steps=STEPS, lr=1e-2)
# The accumulation runs use float64 models: in float32 AdamW (g / sqrt(v)) can blow the rounding of an element whose
# gradient is near zero up to lr (test_integ_transformers measured 4e-3 relative on one element). What is left is
# SRFT's float32 prior gradient (U, V over widths <= 64: depth 8).
ACCUMULATED = adam_trajectory_tolerance(64, depth=8, steps=STEPS, lr=1e-2)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, HERE]), "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], timeout: int = 240) -> None:
    result = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def _load(path: str) -> dict:
    return torch.load(path, weights_only=True)


# --- two processes (one torchrun launch for all scenarios) ---------------------------------------------------------
@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
          os.path.join(HERE, "_integ_dist_worker.py"), str(out)])
    return out


def _single_process(scenario: str) -> dict:
    from _integ_dist_worker import SCENARIOS
    from accelerate import Accelerator

    apply, overrides = SCENARIOS[scenario]
    srft = make_hf_srft(apply, estimate=False, total_steps=STEPS, **overrides)
    srft.estimate_prior(calibration_batches(), progress=False)
    train(Accelerator(cpu=True), srft, STEPS, 8, micro=8)
    return {"params": flat_params(srft), **engine_state(srft)}


@pytest.mark.distributed
@pytest.mark.parametrize("apply", ["grad", "loss", "decoupled", "proximal"])
def test_two_processes_identical_and_equal_to_one_process(two_processes, accelerate_state, apply):
    """Bit-identical ranks and one process's result, in both apply modes and under the post-step prior applications
    (which read only weights, anchors, lr and step: the same on every rank)."""
    ranks = [_load(f"{two_processes}/{apply}_rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    assert int(ranks[0]["step"]) == STEPS
    for key in ranks[0]:  # the same synchronized gradients and the same state give bit-identical ranks
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    one = _single_process(apply)
    assert one.keys() == ranks[0].keys()
    for key in one:
        torch.testing.assert_close(ranks[0][key], one[key], **TRAJECTORY, msg=key)
    assert "tensors.transfer.v" in one and one["tensors.transfer.v"].abs().sum() > 0


@pytest.mark.distributed
def test_ddp_does_not_broadcast_srft_state(two_processes):
    for r in range(2):
        result = torch.load(f"{two_processes}/buffers_rank{r}.pt", weights_only=True)
        assert result["broadcast_buffers"]
        assert result["srft_buffers"] == 0  # SRFT registers no module buffers
        assert result["state_dict_keys_ok"]
        assert result["marker_kept"], f"rank {r}: DDP overwrote SRFT state"


@pytest.mark.distributed
def test_prepare_srft_makes_ranks_identical(two_processes):
    ranks = [_load(f"{two_processes}/sync_rank{r}.pt") for r in range(2)]
    anchor = "tensors.anchor.group0.P0"
    assert not torch.allclose(ranks[0]["before"][anchor], ranks[1]["before"][anchor])  # different weights before
    torch.testing.assert_close(ranks[0]["params"], ranks[1]["params"], rtol=0, atol=0)  # DDP broadcast
    for key in ranks[0]["after"]:
        assert torch.equal(ranks[0]["after"][key], ranks[1]["after"][key]), key
    for r in range(2):  # and the anchors are those of the (synchronized) weights being trained
        for key, value in ranks[r]["fresh"].items():
            torch.testing.assert_close(ranks[r]["after"][f"tensors.anchor.{key}"], value)


def _tangent_operator(entry: dict, D: torch.Tensor) -> torch.Tensor:
    U, V, omega = entry["U"].double(), entry["V"].double(), entry["omega"].double()
    return U @ (omega * (U.T @ D @ V)) @ V.T  # invariant to eigenvector signs


@pytest.mark.distributed
def test_prior_two_processes_equals_one_process(two_processes):
    from srft_peft import get_srft_model
    from srft_peft.significance.prior import KFACSignificance

    ranks = [_load(f"{two_processes}/prior_rank{r}.pt") for r in range(2)]
    srft = make_hf_srft(estimate=False)
    one = srft.estimate_prior(calibration_batches(), progress=False).to_state()
    assert one["num_examples"] == ranks[0]["num_examples"] == 16 and one["num_batches"] == 4
    # a shard alone is a different estimate: the comparison below can fail
    half = get_srft_model(srft.base_model, srft.srft_config).estimate_prior(
        calibration_batches()[0::2], progress=False).to_state()
    assert any(not torch.allclose(h["omega"], o["omega"], rtol=1e-3) for h, o in
               zip(half["entries"].values(), one["entries"].values()) if h["kind"] == "kfac")
    g = torch.Generator().manual_seed(0)
    # the same per-batch float32 products, summed in another order (two shards, then the all-reduce): factors over
    # 16 examples x 5 tokens = 80 rows; their eigenvalues and the normalizer follow within that relative error of the
    # largest, and omega, U, V are stored as float32 (depth 2). A shard alone is off by more than 1e-3 (checked above).
    rtol = float32_rtol(80, depth=2)
    for r in range(2):
        assert ranks[r]["entries"].keys() == one["entries"].keys()
        assert ranks[r]["normalizer"] == pytest.approx(one["normalizer"], rel=rtol)
        for name, e in one["entries"].items():
            got = ranks[r]["entries"][name]
            if e["kind"] == "kfac":
                assert_close32(got["omega"], e["omega"], reduction_size=80, depth=2)
                D = torch.randn(e["U"].shape[0], e["V"].shape[0], generator=g, dtype=torch.float64)
                assert_close32(_tangent_operator(got, D), _tangent_operator(e, D), reduction_size=80, depth=2)
            else:
                assert_close32(got["fisher"], e["fisher"], reduction_size=16, depth=2)  # squared, summed over examples
    rebuilt = PriorSignificance.from_state(ranks[0])
    assert all(isinstance(rebuilt.entries[n], KFACSignificance) == (e["kind"] == "kfac") for n, e in one["entries"].items())


# --- gradient accumulation ------------------------------------------------------------------------------------------
def _accumulated(reset, apply: str, accumulation: int, lambda_prior: float = 200.0) -> tuple[torch.Tensor, int]:
    """``reset``: the ``accelerate_state`` fixture's reset."""
    from accelerate import Accelerator

    reset()
    srft = make_hf_srft(apply, total_steps=STEPS, lambda_prior=lambda_prior).double()  # see ACCUMULATED
    calls = []
    train(Accelerator(cpu=True, gradient_accumulation_steps=accumulation), srft, STEPS, 8, micro=8 // accumulation,
          after_prepare=lambda m, opt, s: opt.optimizer.register_step_pre_hook(lambda *a: calls.append(1)))
    assert srft.step == len(calls) == STEPS  # the hooks ran once per real optimizer step
    return torch.cat([p.detach().reshape(-1) for p in srft.parameters()]), srft.step


@pytest.mark.parametrize("apply", ["grad", "loss"])
def test_accumulation_4x2_equals_batch_8(accelerate_state, apply):
    big, _ = _accumulated(accelerate_state, apply, 1)
    acc, _ = _accumulated(accelerate_state, apply, 4)
    torch.testing.assert_close(acc, big, **ACCUMULATED)  # micro-batches: other sums
    # the penalty matters: counting it once per micro-batch (4x) would change the result far beyond the tolerance
    four_times, _ = _accumulated(accelerate_state, apply, 1, lambda_prior=800.0)
    assert (four_times - big).abs().max() > 100 * ACCUMULATED["atol"]


def test_both_apply_modes_same_update_under_accumulation(accelerate_state):
    grad, _ = _accumulated(accelerate_state, "grad", 4)
    loss, _ = _accumulated(accelerate_state, "loss", 4)
    # the prior gradient by SRFT's fused kernels or by autograd through the penalty, added in another order
    torch.testing.assert_close(grad, loss, **ACCUMULATED)


# --- mixed precision --------------------------------------------------------------------------------------------------
def _perturb(srft, scale: float = 1e-3) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (t.param for t in srft.regularized_targets):
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_bf16_autocast_penalty_is_computed_in_fp32(accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    srft = make_hf_srft("loss", initializer_range=0.5)  # pretrained-like weight scale, small fine-tuning delta
    _perturb(srft)
    params = [t.param for t in srft.regularized_targets]
    reference = srft.prior_penalty()
    ref_grads = torch.autograd.grad(reference, params)
    with accelerator.autocast():
        value = srft.prior_penalty()
        assert torch.is_autocast_enabled("cpu")
    grads = torch.autograd.grad(value, params)
    # autocast off inside the penalty: the very same float32 kernels run, so equal exactly (bf16 would be off by 2^-8)
    torch.testing.assert_close(value, reference, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("apply", ["grad", "loss"])
def test_bf16_training_runs_and_counts_steps(accelerate_state, apply):
    from accelerate import Accelerator

    srft = make_hf_srft(apply, total_steps=4)
    theta0 = flat_params(srft)
    train(Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=2), srft, 4, 8, micro=4)
    assert srft.step == 4
    final = flat_params(srft)
    assert torch.isfinite(final).all() and not torch.equal(final, theta0)


def _scaled_run(fused: bool, scaler: bool, inf_at: int | None = None, apply: str = "grad",
                fp16_autocast: bool = False, steps: int = 5) -> dict:
    srft = make_hf_srft(apply, total_steps=steps)
    optimizer = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0, fused=fused)
    srft.attach(optimizer)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10_000) if scaler else None
    skipped = None
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.float16, enabled=fp16_autocast):
            loss = srft(**examples(step, range(8))).loss
        (grad_scaler.scale(loss) if scaler else loss).backward()
        if step == inf_at:
            next(iter(srft.parameters())).grad.view(-1)[0] = float("inf")
            before = {"params": flat_params(srft), **engine_state(srft), "scale": grad_scaler.get_scale()}
        if scaler:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad()
        if step == inf_at:
            skipped = (before, {"params": flat_params(srft), **engine_state(srft), "scale": grad_scaler.get_scale()})
    return {"params": flat_params(srft), "state": engine_state(srft), "skipped": skipped, "step": srft.step}


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_grad_scaler_steps_equal_unscaled_steps(fused):
    """A GradScaler (power-of-two scale, no overflow) must not change SRFT's update: the prior gradient is added to,
    and the statistics read from, unscaled gradients (fused AdamW unscales inside its kernel, after the hooks)."""
    plain = _scaled_run(fused, scaler=False)
    scaled = _scaled_run(fused, scaler=True)
    assert scaled["step"] == plain["step"] == 5
    # a power-of-two scale multiplies every gradient exactly (no overflow, no subnormals here) and unscaling divides it
    # exactly, through the very same kernels: equal exactly
    torch.testing.assert_close(scaled["params"], plain["params"], rtol=0, atol=0)
    for key in plain["state"]:
        torch.testing.assert_close(scaled["state"][key], plain["state"][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("apply", ["grad", "loss"])
@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_fp16_skipped_step_leaves_srft_state_unchanged(fused, apply):
    run = _scaled_run(fused, scaler=True, inf_at=2, apply=apply, fp16_autocast=True)
    before, after = run["skipped"]
    assert after["scale"] == before["scale"] / 2  # the scaler saw the inf and skipped the step
    for key in before:
        if key != "scale":
            assert torch.equal(before[key], after[key]), key
    assert run["step"] == 4 and torch.isfinite(run["params"]).all()


def test_fp16_scaler_through_accelerated_optimizer(accelerate_state):
    """accelerate refuses fp16 on CPU, so a CPU GradScaler is put where it would put a CUDA one: AcceleratedOptimizer
    then runs GradScaler.step / update around the inner optimizer (and SRFT's hooks), as on a GPU."""
    from accelerate import Accelerator

    from srft_peft.integrations.accelerate import prepare_srft

    def run(scaler: bool, inf_at: int | None = None) -> tuple:
        accelerate_state()
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
        if scaler:
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10_000)
        srft = make_hf_srft(total_steps=4)
        optimizer = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0)
        model, optimizer = accelerator.prepare(srft, optimizer)
        prepare_srft(accelerator, model, optimizer)
        skipped = None
        for step in range(4):
            for m in range(2):
                with accelerator.accumulate(model):
                    accelerator.backward(model(**examples(step, range(4 * m, 4 * m + 4))).loss)
                    poison = step == inf_at and accelerator.sync_gradients
                    if poison:
                        next(iter(srft.parameters())).grad.view(-1)[0] = float("inf")
                        before = {"params": flat_params(srft), **engine_state(srft)}
                    optimizer.step()
                    optimizer.zero_grad()
                    if poison:
                        assert optimizer.step_was_skipped
                        skipped = (before, {"params": flat_params(srft), **engine_state(srft)})
        return flat_params(srft), srft.step, skipped

    plain, steps_plain, _ = run(False)
    scaled, steps_scaled, _ = run(True)
    assert steps_plain == steps_scaled == 4
    torch.testing.assert_close(scaled, plain, rtol=0, atol=0)  # a power-of-two scale: exact, as above
    _, steps, (before, after) = run(True, inf_at=2)
    assert steps == 3
    for key in before:
        assert torch.equal(before[key], after[key]), key


# --- exact resume -----------------------------------------------------------------------------------------------------
@pytest.mark.subprocess
def test_resume_in_new_process_is_exact(accelerate_state, tmp_path):
    from accelerate import Accelerator

    total, k = RESUME_CONFIG["total_steps"], 3
    srft = make_hf_srft(**RESUME_CONFIG)
    train(Accelerator(cpu=True), srft, total, 8, micro=8, scheduler="lambda")
    uninterrupted = flat_params(srft)

    accelerate_state()
    accelerator = Accelerator(cpu=True)
    srft = make_hf_srft(**RESUME_CONFIG)
    train(accelerator, srft, total, 8, micro=8, scheduler="lambda", stop_after=k)
    accelerator.save_state(str(tmp_path / "ckpt"))
    custom = torch.load(tmp_path / "ckpt" / "custom_checkpoint_0.pkl", weights_only=True)  # plain data only
    assert custom["engine"]["step"] == k and "prior" in custom and custom["engine"]["tensors"]

    _run([sys.executable, os.path.join(HERE, "_integ_resume_worker.py"), str(tmp_path / "ckpt"),
          str(tmp_path / "resumed.pt"), str(k), str(total)])
    resumed = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert int(resumed["step"]) == total
    torch.testing.assert_close(resumed["params"], uninterrupted, rtol=0, atol=0)  # the same kernels replayed: exactly

    # without the SRFT state (model, optimizer and scheduler restored, SRFT restarted) the run is not the same
    shutil.copytree(tmp_path / "ckpt", tmp_path / "no_srft")
    os.remove(tmp_path / "no_srft" / "custom_checkpoint_0.pkl")
    accelerate_state()
    accelerator = Accelerator(cpu=True)
    srft = make_hf_srft(**RESUME_CONFIG)
    train(accelerator, srft, total, 8, micro=8, start=k, scheduler="lambda", checkpoint=False,
          after_prepare=lambda *_: accelerator.load_state(str(tmp_path / "no_srft")))
    assert (flat_params(srft) - uninterrupted).abs().max() > 1e-4


def test_attach_with_accelerator_registers_state_once(accelerate_state, tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    srft = make_hf_srft(total_steps=4)
    optimizer = torch.optim.AdamW(srft.parameters(), lr=1e-2, weight_decay=0.0)
    model, optimizer = accelerator.prepare(srft, optimizer)
    srft.attach(optimizer, accelerator=accelerator)
    srft.attach(optimizer, accelerator=accelerator)  # idempotent: one registration
    assert prepare_srft(accelerator, model, optimizer) is srft  # the same model again: still one
    accelerator.save_state(str(tmp_path / "state"))
    assert sorted(p.name for p in (tmp_path / "state").glob("custom_checkpoint_*")) == ["custom_checkpoint_0.pkl"]
    assert srft.attached
    loss = model(**examples(0, range(4))).loss
    accelerator.backward(loss)
    optimizer.step()
    assert srft.step == 1
