"""benchmarks/recipe_ablation.py without fine-tuning: the plan changes one recipe field per row on top of the tune
stage's chosen configuration and reads validation only; the table's differences are paired by seed; bad inputs fail
with the file or field named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import recipe_ablation as ra
from benchmarks import transfer

CHOSEN = {"rgbt": {"lr": 3e-4, "lambda_prior": 10.0}, "rgbd": {"lr": 1e-4, "lambda_prior": 1.0}}


def tuned_file(tmp_path: Path) -> Path:
    path = tmp_path / "transfer.json"
    path.write_text(json.dumps({"chosen": {f"{m} srft": knobs for m, knobs in CHOSEN.items()}
                                | {"rgbt full": {"lr": 1e-4}}}))
    return path


def test_plan_one_field_per_row_on_the_chosen_configuration(tmp_path):
    args = ra.parse_args(["--tuned", str(tuned_file(tmp_path)), "--modalities", "rgbt", "rgbd", "--seeds", "100",
                          "--pretrained", str(tmp_path / "tracker")])
    data = transfer.Data({m: tmp_path / f"v2_{m}" for m in CHOSEN}, tmp_path / "v2_rgb", tmp_path / "view")
    planned = ra.plan(args, data, ra.load_chosen(Path(args.tuned), args.modalities))
    assert [row for row, _ in planned] == list(ra.ROWS) * 2
    default = {run.modality: run for row, run in planned if row == ra.DEFAULT}
    # the default row is exactly the tune stage's run of the chosen configuration (so a finished one is reused)
    tune = transfer.parse_args(["--protocol", "v2", "--methods", "srft", "--modalities", *CHOSEN, "--pretrained",
                                args.pretrained])  # the ablation started from v2's chosen configurations
    tune_runs = transfer.plan_tune(tune, data)
    assert all(run in tune_runs for run in default.values())
    for row, run in planned:
        changed = {k: v for k, v in run.settings.items() if default[run.modality].settings.get(k) != v}
        assert changed == ra.ROWS[row]
        assert Path(run.settings["test_root"]).name == "val" and run.settings["rgb_root"].endswith("view")
        assert run.settings["lr"] == CHOSEN[run.modality]["lr"]
        assert run.settings["srft_overrides"]["lambda_prior"] == CHOSEN[run.modality]["lambda_prior"]
    # prior_scope changes what the prior covers: its own prior; clip_order and kappa_horizon share the default's
    keys = {row: transfer.prior_key(run) for row, run in planned if run.modality == "rgbt"}
    assert keys["clip_order=task"] == keys["kappa_horizon=0.3"] == keys[ra.DEFAULT] is not None
    assert len({keys[ra.DEFAULT], keys["prior_scope=all"], keys["prior_scope=rgb-stream"]}) == 3


def test_table_pairs_differences_by_seed():
    def entry(row, seed, target, rgb, share=0.25):
        # two validation sequences per side, their mean the run's SR
        return {"modality": "rgbt", "row": row, "seed": seed, "target_sr": target, "rgb_sr": rgb,
                "score": (target + rgb) / 2, "transfer_share": share,
                "target_seq": {"a": {"SR": target - 0.1}, "b": {"SR": target + 0.1}},
                "rgb_seq": {"c": {"SR": rgb}, "d": {"SR": rgb}}}

    entries = [entry("kappa_horizon=0.3", 100, 0.50, 0.50, 0.6), entry(ra.DEFAULT, 100, 0.40, 0.40),
               entry(ra.DEFAULT, 101, 0.60, 0.60), entry("kappa_horizon=0.3", 101, 0.50, 0.50, 0.6),
               entry("clip_order=task", 101, 0.62, 0.60)]  # seed 100 missing: compared on seed 101 only
    rows = ra.summarize_rows(entries, resamples=200)["rgbt"]
    assert [r["row"] for r in rows] == [ra.DEFAULT, "clip_order=task", "kappa_horizon=0.3"]  # ROWS order
    assert rows[2]["delta"] == pytest.approx([0.10, -0.10]) and rows[2]["score"] == pytest.approx(0.5)
    assert rows[0]["score"] == pytest.approx(0.5) and rows[2]["transfer_share"] == pytest.approx(0.6)
    assert rows[2]["target_delta"]["mean"] == pytest.approx(0.0) and rows[2]["target_delta"]["n_pairs"] == 4
    assert rows[2]["target_delta"]["low"] < -0.05 < 0.05 < rows[2]["target_delta"]["high"]  # +10 / -10 by seed
    assert rows[1]["seeds"] == [101] and rows[1]["target_delta"]["mean"] == pytest.approx(0.02)
    text = ra.format_table(rows)
    assert "| kappa_horizon=0.3 | 50.0 | 50.0 | 50.0 | +0.0 (+10.0, -10.0) | +0.0 [" in text
    assert text.splitlines()[-1].endswith("| +0.0 [-10.0, +10.0] | 0.600 |")  # RGB: constant per seed, ±10
    assert "| default | 50.0 | 50.0 | 50.0 | — | — | — | 0.250 |" in text


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tune-stage result at .*missing.json"):
        ra.load_chosen(tmp_path / "missing.json", ["rgbt"])
    with pytest.raises(ValueError, match=r"no chosen srft configuration for \['rgbe'\]"):
        ra.load_chosen(tuned_file(tmp_path), ["rgbt", "rgbe"])
    with pytest.raises(SystemExit):
        ra.parse_args(["--rows", "clip_order=task", "--pretrained", str(tmp_path)])  # no default row to compare to
    ra.check_default_recipe()  # the library's defaults are the default row's
