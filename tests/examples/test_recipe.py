"""The fine-tuning recipe fields (clip_order, prior_scope, kappa_horizon), validation, early stopping and the start
row of srft_peft.tracking.train, on tiny models and the tiny demo sets (a few steps)."""

from __future__ import annotations

import copy
import json
import shutil
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from accelerate.state import AcceleratorState, GradientState
from engine_helpers import prior_lambda
from safetensors.torch import load_file
from tolerances import assert_close32

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.tracking import OSTrackRGBX, TrackerConfig, load_tracker
from srft_peft.tracking.train import (
    FinetuneConfig,
    build_parser,
    clip_gradients,
    config_from_args,
    evaluate_tracker,
    finetune_rgbx,
    prior_scope_fields,
    uniform_prior,
)
from srft_peft.tracking.train import finetune as finetune_module
from srft_peft.tracking.train.data import load_rgbx_splits, truncate_sequence


# --- configuration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"clip_order": "after"}, "clip_order must be one of ['total', 'task'], got 'after'"),
    ({"prior_scope": "x-stream"}, "prior_scope must be one of ['all', 'pretrained', 'rgb-stream'], got 'x-stream'"),
    ({"kappa_horizon": 0.0}, "kappa_horizon must be a number in (0, 1], got 0.0"),
    ({"kappa_horizon": 1.5, "method": "full"}, "kappa_horizon must be a number in (0, 1], got 1.5"),
    ({"eval_every": -1}, "eval_every must be a non-negative integer, got -1"),
    ({"val_sequences": 0}, "val_sequences must be a positive integer or None, got 0"),
    ({"early_stopping": True}, "early_stopping=True needs eval_every > 0 (validation during training), got "
                               "eval_every=0"),
    ({"clip_order": "task", "srft_overrides": {"apply": "loss"}}, "clip_order='task' cannot hold with srft_overrides "
                                                                  "apply='loss'"),
])
def test_bad_recipe_fields_are_refused_naming_field_and_value(fields, message):
    with pytest.raises(ValueError) as err:
        FinetuneConfig(**fields)
    assert message in str(err.value)


def test_recipe_fields_have_flags_and_reach_the_srft_config():
    args = build_parser("rgbt").parse_args(["--clip-order", "task", "--prior-scope", "all", "--kappa-horizon", "0.5",
                                            "--eval-every", "5", "--early-stopping", "--val-root", "/v"])
    cfg = config_from_args(args)
    assert (cfg.clip_order, cfg.prior_scope, cfg.kappa_horizon, cfg.eval_every, cfg.early_stopping, cfg.val_root) == (
        "task", "all", 0.5, 5, True, "/v")
    assert FinetuneConfig().clip_order == "total" and FinetuneConfig().prior_scope == "pretrained"
    assert cfg.method_srft_overrides == {"kappa_horizon": 0.5}
    assert FinetuneConfig(kappa_horizon=0.5, srft_overrides={"kappa_horizon": 0.25}).method_srft_overrides == {
        "kappa_horizon": 0.25}  # explicit SRFTConfig overrides win
    assert FinetuneConfig(method="full", kappa_horizon=0.5).method_srft_overrides == {}
    with pytest.raises(SystemExit):
        build_parser("rgbt").parse_args(["--prior-scope", "everything"])


# --- clip_order ---------------------------------------------------------------------------------------------------
def _clipped_step(apply: str, clip_order: str, max_norm: float = 0.05,
                  record: dict | None = None) -> dict[str, torch.Tensor]:
    """One SGD step (lr 0.5) of a small float64 model under L2-SP-like SRFT (uniform prior, no transfer) with weights
    moved away from theta0, through :func:`clip_gradients`; with ``apply="loss"`` the penalty is in the loss.
    ``record`` receives theta0, theta, the task gradient (before clipping) and lambda_p of the step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    srft = get_srft_model(model, SRFTConfig(apply=apply, lambda_transfer=0.0, lambda_prior=3.0, total_steps=10))
    srft.set_prior(uniform_prior(srft))
    optimizer = torch.optim.SGD(srft.parameters(), lr=0.5)
    srft.attach(optimizer)
    with torch.no_grad():
        for p in srft.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = srft(x).pow(2).mean()
    if apply == "loss":
        loss = loss + srft.srft_loss()
    loss.backward()
    if record is not None:
        record.update(theta0=theta0, lam=prior_lambda(srft),
                      theta={k: v.detach().clone() for k, v in model.named_parameters()},
                      task={k: v.grad.clone() for k, v in model.named_parameters()})
    accelerator = types.SimpleNamespace(clip_grad_norm_=torch.nn.utils.clip_grad_norm_, scaler=None)
    clip_gradients(accelerator, srft, list(srft.parameters()), max_norm, clip_order)
    optimizer.step()
    return {k: v.detach().clone() for k, v in srft.get_base_model().state_dict().items()}


# float64 weights, but SRFT computes the prior gradient on float32 copies: theta - theta0 rounded once (eps |theta|)
# and, in the norm of the total gradient, a float32 sum over the 83 weights
def test_clip_order_total_equals_clipping_the_loss_with_the_penalty():
    total = _clipped_step("grad", "total")
    in_loss = _clipped_step("loss", "total")
    task = _clipped_step("grad", "task")
    for key in total:
        assert_close32(total[key], in_loss[key], reduction_size=83, depth=2)
    assert any(not torch.allclose(total[k], task[k], atol=1e-4) for k in total)  # the order changes the update


def test_clip_order_task_leaves_the_prior_gradient_outside_the_clip():
    """'task': the step is the clipped task gradient plus the unclipped prior gradient (the first recipe's order):
    theta - lr * (clip(g_task) + lambda_p * (theta - theta0)), L2-SP's R = 1/2 ||theta - theta0||^2, in float64."""
    seen: dict = {}
    got = _clipped_step("grad", "task", max_norm=0.05, record=seen)
    norm = torch.cat([g.flatten() for g in seen["task"].values()]).norm()
    assert norm > 4 * 0.05  # the clip acts
    scale = 0.05 / (float(norm) + 1e-6)  # torch's clip_grad_norm_ coefficient
    for key, theta in seen["theta"].items():
        prior = seen["lam"] * (theta - seen["theta0"][key])
        expected = theta - 0.5 * (scale * seen["task"][key] + prior)
        assert_close32(got[key], expected, reduction_size=1, depth=2)  # the float32 copy of theta - theta0
        clipped_total = theta - 0.5 * scale * (seen["task"][key] + prior)  # the other order, for contrast
        assert not torch.allclose(got[key], clipped_total, atol=1e-4)
    assert seen["lam"] > 0


# --- prior_scope --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dual() -> OSTrackRGBX:
    torch.manual_seed(0)
    rgb = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    return OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init="identity")


def _regularized(model: OSTrackRGBX, fields: dict) -> set[str]:
    return set(get_srft_model(copy.deepcopy(model), SRFTConfig(**fields)).regularized_parameters)


def test_prior_scope_pretrained_excludes_exactly_the_x_patch_embedding_and_fusion_outputs(dual):
    everything = _regularized(dual, prior_scope_fields(dual, "all", "identity"))
    pretrained = _regularized(dual, prior_scope_fields(dual, "pretrained", "identity"))
    fusion = [f"fusion.{i}.{m}." for i in dual.config.fusion_layers for m in ("attn.proj", "mlp.fc2")]
    expected_out = {n for n in everything if n.startswith("backbone_x.patch_embed.")
                    or any(n.startswith(f) for f in fusion)}
    assert everything - pretrained == expected_out and pretrained <= everything
    assert {"backbone_x.patch_embed.proj.weight", "fusion.0.attn.proj.weight", "fusion.0.mlp.fc2.bias"} <= expected_out
    assert "fusion.0.attn.qkv.weight" in pretrained and "backbone.patch_embed.proj.weight" in pretrained
    # under the authors' "copy" init the fusion blocks are pretrained blocks: only the X patch embedding is left out
    copied = _regularized(dual, prior_scope_fields(dual, "pretrained", "copy"))
    assert everything - copied == {n for n in everything if n.startswith("backbone_x.patch_embed.")}
    rgb_stream = _regularized(dual, prior_scope_fields(dual, "rgb-stream", "identity"))
    assert rgb_stream == {n for n in everything if n.startswith("backbone.")}


def test_prior_scope_needs_a_dual_stream_tracker(dual):
    prompt = OSTrackRGBX(TrackerConfig(variant="tiny", mode="prompt", template_size=32, search_size=64))
    with pytest.raises(ValueError, match="prior_scope='pretrained' needs a dual-stream tracker, got mode='prompt'"):
        prior_scope_fields(prompt, "pretrained", "identity")
    assert prior_scope_fields(prompt, "all", "identity") == {}
    with pytest.raises(ValueError, match="prior_scope must be one of .*got 'none'"):
        prior_scope_fields(dual, "none", "identity")


# --- tiny runs: validation split, early stopping, start row -------------------------------------------------------
def _common(tiny_data, tmp_path: Path, **fields) -> FinetuneConfig:
    values = dict(method="full", data_root=str(tiny_data["rgbt"]), pretrained=str(tiny_data["tracker"]),
                  rgb_root=str(tiny_data["rgb"]), output_dir=str(tmp_path / "run"), steps=3, batch_size=2,
                  prior_batches=1, save_every=0, report_to=None, progress=False, eval_sequences=1, eval_frames=4)
    return FinetuneConfig(**{**values, **fields})


def test_validation_split_is_found_or_disabled(tiny_data, tmp_path):
    assert load_rgbx_splits(_common(tiny_data, tmp_path)).val == []  # a v1 demo set: train/ and test/ only
    root = tmp_path / "with_val"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for seq in (tiny_data["rgbt"] / split).iterdir():
            (root / split / seq.name).symlink_to(seq)
    (root / "val").symlink_to(tiny_data["rgbt"] / "test")
    splits = load_rgbx_splits(_common(tiny_data, tmp_path, data_root=str(root)))
    assert [s.name for s in splits.val] == [s.name for s in splits.test] and splits.val


def test_early_stopping_without_validation_split_is_refused_before_writing(tiny_data, tmp_path, accelerate_state):
    cfg = _common(tiny_data, tmp_path, eval_every=1, early_stopping=True)
    with pytest.raises(ValueError, match="early_stopping needs validation sequences: no val split under"):
        finetune_rgbx(cfg)
    assert not (tmp_path / "run").exists()


def _script_validation(monkeypatch, scripted):
    """Validation SR values taken from ``scripted`` (test evaluations, which write results, stay real)."""
    real = finetune_module.evaluate_tracker

    def fake(model, seqs, results_dir, device, progress, rgb_input=False, **kwargs):
        if results_dir.name != "validation_results":
            return real(model, seqs, results_dir, device, progress, rgb_input, **kwargs)
        return {"SR": next(scripted), "PR": 0.0, "NPR": 0.0, "per_sequence": {}}

    monkeypatch.setattr(finetune_module, "evaluate_tracker", fake)
    return scripted


def test_early_stopping_tests_the_best_validation_weights(tiny_data, tmp_path, accelerate_state, monkeypatch):
    """Validation SR scripted as 0.1, 0.2, 0.9, 0.3 at steps 0..3: the tested weights are those of step 2."""
    _script_validation(monkeypatch, iter([0.1, 0.2, 0.9, 0.3]))
    cfg = _common(tiny_data, tmp_path, eval_every=1, early_stopping=True, save_every=1, keep_checkpoints=0,
                  val_root=str(tiny_data["rgbt"] / "test"), evaluate_rgb=True)
    results = finetune_rgbx(cfg)
    history = results["validation"]["history"]
    assert [e["step"] for e in history] == [0, 1, 2, 3] and [e["SR"] for e in history] == [0.1, 0.2, 0.9, 0.3]
    assert results["validation"]["best_step"] == 2 and results["final_step"] == 2 and results["steps"] == 3
    tested = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    at = {s: load_file(str(tmp_path / "run" / "checkpoints" / f"step_{s:06d}" / "model.safetensors")) for s in (2, 3)}
    assert all(torch.equal(tested[k], at[2][k]) for k in at[2])
    assert any(not torch.equal(tested[k], at[3][k]) for k in at[3])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["validation"]["best_step"] == 2 and set(saved["per_sequence"]) == {
        "test", "start_test", "retention", "start_retention"}
    assert saved["per_sequence"]["test"] and saved["per_sequence"]["retention"]


def test_start_row_is_the_converted_model_on_rgb_x(tiny_data, tmp_path, accelerate_state):
    cfg = _common(tiny_data, tmp_path, steps=1, evaluate_rgb_tracker=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = finetune_rgbx(cfg, eval_every=1)  # no val split: validation is off (warned), training goes on
    assert results["validation"] is None
    rgb = load_tracker(tiny_data["tracker"])
    start = OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init="identity")
    seqs = [truncate_sequence(s, 4) for s in load_rgbx_splits(cfg).test[:1]]
    expected = evaluate_tracker(start, seqs, None, torch.device("cpu"), progress=False)
    assert results["baseline_metrics"]["SR"] == pytest.approx(expected["SR"])
    assert results["per_sequence"]["start_test"] == expected["per_sequence"]
    assert "converted dual-stream model" in results["baseline"]
    rgb_row = evaluate_tracker(rgb, seqs, None, torch.device("cpu"), progress=False)
    assert results["rgb_tracker_metrics"]["SR"] == pytest.approx(rgb_row["SR"])


def test_resumed_early_stopping_keeps_the_validation_history_and_best_weights(tiny_data, tmp_path, accelerate_state,
                                                                               monkeypatch):
    """Interrupted after step 2 (best so far: step 1), resumed: steps 0-2 are not re-validated, the best weights of
    step 1 come back from best_model/ and are the ones tested when step 3 is worse."""
    scripted = _script_validation(monkeypatch, iter([0.1, 0.8, 0.5, 0.3, 0.3]))
    cfg = _common(tiny_data, tmp_path, eval_every=1, early_stopping=True, save_every=1, keep_checkpoints=0,
                  val_root=str(tiny_data["rgbt"] / "test"), evaluate_baseline=False)
    first = finetune_rgbx(cfg)
    assert first["final_step"] == 1
    tested = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000003")
    shutil.rmtree(tmp_path / "run" / "model")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = finetune_rgbx(cfg, resume="latest")
    assert [e["SR"] for e in resumed["validation"]["history"]] == [0.1, 0.8, 0.5, 0.3]  # one new validation
    assert next(scripted, None) is None  # 4 validations in the first run, 1 (step 3) in the resumed one
    assert resumed["final_step"] == 1 and resumed["validation"]["best_step"] == 1
    again = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.equal(tested[k], again[k]) for k in tested)
