"""finetune_rgbx applies the recipe fields (docs/tracking.md, "OSTrack's recipe"): the optimizer's learning rates per
group under the step schedule, drop path in the trained model, and the candidate-elimination keep-ratio warm-up."""

from __future__ import annotations

import dataclasses
import json

import pytest

from srft_peft.tracking import OSTrackRGBX, load_tracker, save_tracker
from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx
from srft_peft.tracking.train import finetune as finetune_module


def test_finetune_applies_the_recipe(tiny_data, tmp_path, accelerate_state, monkeypatch):
    # a CE version of the tiny RGB tracker (same weights): CE is a setting of the config
    rgb = load_tracker(tiny_data["tracker"])
    ce_rgb = OSTrackRGBX(dataclasses.replace(rgb.config, ce_locations=(1, 2), ce_keep_ratio=(0.7, 0.7)))
    ce_rgb.load_state_dict(rgb.state_dict())
    save_tracker(ce_rgb, tmp_path / "ce_tracker")

    optimizers, ratios = [], []
    real_optimizer = finetune_module._optimizer
    monkeypatch.setattr(finetune_module, "_optimizer", lambda *a: optimizers.append(real_optimizer(*a)) or optimizers[0])
    real_set = OSTrackRGBX.set_ce_keep_ratio
    monkeypatch.setattr(OSTrackRGBX, "set_ce_keep_ratio", lambda self, r: ratios.append(r) or real_set(self, r))

    cfg = FinetuneConfig(
        method="full", data_root=str(tiny_data["rgbt"]), pretrained=str(tmp_path / "ce_tracker"),
        output_dir=str(tmp_path / "out"), steps=4, batch_size=2, save_every=0, save_every_minutes=0, report_to=None,
        progress=False, evaluate_baseline=False, evaluate_rgb=False, eval_sequences=1, eval_frames=3, lr=1e-3,
        backbone_lr_multiplier=0.1, lr_schedule="step", lr_drop_at=0.5, lr_drop_factor=0.1, drop_path=0.1,
        flip_prob=0.5, crop_flip_prob=0.5, gray_prob=0.05, brightness_jitter=0.2,
        ce_start_fraction=0.25, ce_warm_fraction=0.5,
    )
    results = finetune_rgbx(cfg)
    assert results["steps"] == 4 and results["recipe"]["lr_schedule"] == "step"
    # after 4 steps the step schedule has dropped (at step 2): backbone groups 1e-3 * 0.1 * 0.1, the rest 1e-3 * 0.1
    by_lr = {round(g["lr"], 12) for g in optimizers[0].param_groups}
    assert by_lr == {1e-5, 1e-4}, by_lr
    # warm-up: start 1 step, warm 2 steps -> 1, 1, 0.85, 0.7 at steps 0..3 (one call per micro-batch)
    assert [r[0] for r in ratios] == pytest.approx([1.0, 1.0, 0.85, 0.7], abs=1e-12)
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["drop_path"] == 0.1 and saved["ce_keep_ratio"] == [0.7, 0.7]  # eval keeps the tracker's ratio
