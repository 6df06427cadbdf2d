"""benchmarks/transfer.py: the two-stage protocol on tiny demo v2 sets. The tune stage reads validation only and
selects by the stated rule with an equal budget per method; the final stage runs the chosen configurations, writes
the tables with intervals, the verdict and the plots, and reuses runs whose settings match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import srft_peft.tracking.train.data as train_data
from benchmarks import transfer


def quick_args(tiny_data, out, *extra: str) -> list[str]:
    return ["--quick", "--out", str(out), "--pretrained", str(tiny_data["tracker"]), *extra]


@pytest.fixture
def guarded_splits(monkeypatch) -> list[str]:
    """Make reading a target test split or the RGB retention split raise (in this process: use --jobs 1); returns
    the folders read."""
    read: list[str] = []
    original = train_data.load_dataset

    def load_dataset(name, root, *args, **kwargs):
        folder = Path(root).resolve()
        read.append(folder.name)
        if folder.name in ("test", "retention"):
            raise AssertionError(f"held-out split read: {folder}")
        return original(name, root, *args, **kwargs)

    monkeypatch.setattr(train_data, "load_dataset", load_dataset)
    return read


def test_tune_stage_reads_validation_only(tiny_data, tmp_path, guarded_splits):
    out = tmp_path / "bench"
    result = transfer.main(quick_args(tiny_data, out, "--stage", "tune", "--jobs", "1"))
    assert set(guarded_splits) == {"train", "val", "pretrain"}  # the RGB "test" of the tune view is RGB val
    assert set(result["chosen"]) == {"rgbt srft", "rgbt full", "rgbt lora"}
    records = [json.loads(p.read_text()) for p in sorted(out.glob("runs/tune/*/bench.json"))]
    assert len(records) == 6 and {r["seed"] for r in records} == {transfer.TUNING_SEED}
    assert all(Path(r["settings"]["test_root"]).name == "val" for r in records)
    assert "Tuning, RGB-T (validation only)" in (out / "tune.md").read_text()
    assert json.loads((out / "tune.json").read_text())["chosen"] == result["chosen"]
    assert not (out / "transfer.json").exists()  # reserved for the final stage's result
    # control: the guard does fire when a stage reads the test set
    with pytest.raises(AssertionError, match="held-out split read"):
        transfer.main(quick_args(tiny_data, out, "--stage", "final", "--jobs", "1"))


@pytest.mark.subprocess  # worker processes (--jobs 2)
def test_quick_run_both_stages(tiny_data, tmp_path):
    out = tmp_path / "bench"
    result = transfer.main(quick_args(tiny_data, out, "--jobs", "2"))
    final = [json.loads(p.read_text()) for p in sorted(out.glob("runs/final/*/bench.json"))]
    assert sorted(r["method"] for r in final) == ["full", "lora", "srft"]
    for r in final:  # the final runs use the configuration chosen on validation, and read the test sets
        assert r["knobs"] == result["chosen"][f"rgbt {r['method']}"]
        assert Path(r["settings"]["data_root"]).name == "v2_rgbt" and r["seed"] == 0
    assert sum(r["start_target"] is not None for r in final) == 1  # the start is scored once
    text = (out / "transfer.md").read_text()
    assert "| start (step 0) |" in text and "Δ target SR vs full [95 % CI]" in text
    assert "### Verdict" in text and result["verdict"].startswith("claim for 'srft': ")
    assert set(result["tables"]["rgbt"]["target"]["SR"]) == {transfer.START, "srft", "full", "lora"}
    assert (out / "transfer_rgbt.png").stat().st_size > 0
    assert "Tune stage" in text.splitlines()[0] and "final stage" in text.splitlines()[0]

    # same settings: every run is reused (bench.json untouched)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/bench.json")}
    transfer.main(quick_args(tiny_data, out, "--jobs", "1"))
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/bench.json")} == stamps


def test_selection_rule_and_budget():
    def record(method, lr, target, rgb):
        return {"modality": "rgbt", "method": method, "knobs": {"lr": lr}, "target": {"SR": target},
                "rgb": {"SR": rgb}}

    records = [record("full", 1, 0.6, 0.1), record("full", 2, 0.4, 0.4), record("full", 3, 0.3, 0.5),
               record("ewc", 1, 0.5, 0.5), record("ewc", 2, 0.6, 0.4)]
    # mean of target-val and RGB-val SR; the first configuration in grid order on a tie
    assert transfer.select(records) == {("rgbt", "full"): {"lr": 2}, ("rgbt", "ewc"): {"lr": 1}}
    for name, protocol in transfer.PROTOCOLS.items():
        assert set(protocol.grid) == set(protocol.methods), name
        assert len({len(grid) for grid in protocol.grid.values()}) == 1, name  # the same budget for every method
        assert all("lr" in knobs for grid in protocol.grid.values() for knobs in grid), name
        assert not set(protocol.final_seeds) & {transfer.TUNING_SEED}, name
    # v3: every anchored full-model method searches the same learning rates (v2 capped them below full's)
    v3 = transfer.PROTOCOLS["v3"].grid
    anchored = ("srft", "srft-prior-only", "srft-transfer-only", transfer.SCOPE_ALL, "ewc", "l2sp")
    assert len({tuple(sorted({k["lr"] for k in v3[m]})) for m in anchored}) == 1
    assert max(k["lr"] for k in v3["full"]) > max(k["lr"] for k in v3["srft"])  # and full goes beyond them
    # v4: the claim's anchored methods search full fine-tuning's whole lr range
    v4 = transfer.PROTOCOLS["v4"].grid
    assert {k["lr"] for k in v4["srft"]} == {k["lr"] for k in v4["ewc"]} == {k["lr"] for k in v4[transfer.SCOPE_ALL]}
    assert max(k["lr"] for k in v4["srft"]) == max(k["lr"] for k in v4["full"])
    assert {"srft", "full", "ewc", "lora"} <= set(transfer.PROTOCOLS["v4"].methods)
    # fresh final seeds: each protocol's were never read before it
    seeds = [set(p.final_seeds) for p in transfer.PROTOCOLS.values()]
    assert all(not a & b for i, a in enumerate(seeds) for b in seeds[i + 1:])


def test_plan_and_prior_sharing(tiny_data, tmp_path):
    args = transfer.parse_args(quick_args(tiny_data, tmp_path, "--methods", "srft", "full", "--protocol", "v3"))
    args.methods = ["srft", "srft-prior-only", "ewc", "l2sp", "srft-transfer-only", transfer.EARLY_STOP]
    data = transfer.Data({"rgbt": tmp_path / "v2_rgbt"}, tmp_path / "v2_rgb", tmp_path / "view")
    runs = {(r.method, r.knobs["lr"]): r for r in transfer.plan_tune(args, data)}
    srft, prior_only = runs["srft", 1e-4], runs["srft-prior-only", 4e-4]
    assert srft.settings["srft_overrides"] == {"prior_rank": 8, "lambda_prior": 1.0}
    # lr, lambda and the transfer term do not change the prior; the estimator does; L2-SP / transfer-only have none
    assert transfer.prior_key(srft) == transfer.prior_key(prior_only) is not None
    assert transfer.prior_key(runs["ewc", 1e-4]) not in (None, transfer.prior_key(srft))
    assert transfer.prior_key(runs["l2sp", 1e-4]) is None
    assert transfer.prior_key(runs["srft-transfer-only", 1e-4]) is None
    early = runs[transfer.EARLY_STOP, 5e-5]
    assert early.settings["early_stopping"] and early.settings["eval_every"] == 10
    assert transfer.library_method(early.method) == "full"


def test_dependent_run_estimates_the_prior_when_the_provider_folder_has_none(tiny_data, tmp_path, monkeypatch):
    """Run records restored without their folders (benchmarks/records/): a run whose prior provider is reused from
    its bench.json alone estimates the prior itself instead of loading a missing folder; with the folder it loads."""
    args = transfer.parse_args(quick_args(tiny_data, tmp_path, "--methods", "srft", "--protocol", "v3"))
    data = transfer.Data({"rgbt": tmp_path / "v2_rgbt"}, tmp_path / "v2_rgb", tmp_path / "view")
    provider, dependent = [r for r in transfer.plan_tune(args, data) if r.method == "srft"][:2]
    assert transfer.prior_key(provider) == transfer.prior_key(dependent) is not None
    seen: list = []

    def finetune(cfg):
        seen.append(cfg.prior)
        raise RuntimeError("stop after the config")

    monkeypatch.setattr(transfer, "finetune_rgbx", finetune)
    for make_folder in (False, True):
        if make_folder:
            (tmp_path / "runs" / provider.folder / "prior").mkdir(parents=True)
        with pytest.raises(RuntimeError, match="stop after the config"):
            transfer.run_one(dependent, tmp_path, evaluate_baseline=False, prior_from=provider)
    assert seen == [None, str(tmp_path / "runs" / provider.folder / "prior")]


def test_variant_settings_and_protocol_flags(tiny_data, tmp_path):
    args = transfer.parse_args(quick_args(tiny_data, tmp_path, "--protocol", "v3"))
    assert args.seeds == [0] and args.methods == ["srft", "full", "lora"]  # --quick's
    args = transfer.parse_args(["--pretrained", str(tiny_data["tracker"]), "--methods", transfer.SCOPE_ALL, "srft",
                                "--protocol", "v3"])
    assert args.seeds == list(transfer.PROTOCOLS["v3"].final_seeds)
    data = transfer.Data({m: tmp_path / m for m in transfer.MODALITIES}, tmp_path / "v2_rgb", tmp_path / "view")
    runs = {(r.method, r.knobs["lr"], r.knobs["lambda_prior"], r.modality): r for r in transfer.plan_tune(args, data)}
    scope_all, srft = runs[transfer.SCOPE_ALL, 1e-4, 1.0, "rgbt"], runs["srft", 1e-4, 1.0, "rgbt"]
    assert scope_all.settings["prior_scope"] == "all" and "prior_scope" not in srft.settings
    assert transfer.library_method(scope_all.method) == "srft"
    # a different scope covers other tensors: its own prior; the same prior across modalities (RGB calibration)
    assert transfer.prior_key(scope_all) != transfer.prior_key(srft)
    assert transfer.prior_key(runs["srft", 4e-4, 10.0, "rgbd"]) == transfer.prior_key(srft)
    with pytest.raises(SystemExit):  # v2 has no srft-scope-all
        transfer.parse_args(["--protocol", "v2", "--methods", transfer.SCOPE_ALL, "--pretrained", "x"])


def test_protocol_v5_tunes_the_prior_application_of_every_anchored_method(tiny_data, tmp_path):
    args = transfer.parse_args(["--pretrained", str(tiny_data["tracker"])])
    assert args.protocol == transfer.DEFAULT_PROTOCOL == "v5"
    assert (args.steps, args.eval_every, args.seeds) == (300, 25, [9, 10, 11])  # the forgetting regime, fresh seeds
    assert not {9, 10, 11} & {s for p in ("v2", "v3", "v4") for s in transfer.PROTOCOLS[p].final_seeds}
    assert transfer.parse_args(quick_args(tiny_data, tmp_path)).steps == 2
    data = transfer.Data({m: tmp_path / m for m in transfer.MODALITIES}, tmp_path / "v2_rgb", tmp_path / "view")
    runs = transfer.plan_tune(args, data)
    per_method = {m: [r for r in runs if r.method == m and r.modality == "rgbd"] for m in args.methods}
    assert {len(v) for v in per_method.values()} == {6}  # an equal budget
    for method in ("srft", "ewc", "l2sp"):
        modes = {r.settings["srft_overrides"]["prior_application"] for r in per_method[method]}
        assert modes == {"gradient", "decoupled", "proximal"}
        keys = {transfer.prior_key(r) for r in per_method[method]}  # the mode does not change the prior
        assert len(keys) == 1 and (keys == {None}) == (method == "l2sp")
    full_lrs = {r.knobs["lr"] for r in per_method["full"]}
    assert max(full_lrs) == 3.2e-3 and {r.knobs["lr"] for r in per_method["srft"]} <= full_lrs
    assert all(r.settings["eval_every"] == 25 for r in per_method[transfer.EARLY_STOP])


def test_bad_flags(tiny_data, tmp_path):
    with pytest.raises(SystemExit):
        transfer.parse_args(["--set", "not_a_field=1"])
    with pytest.raises(SystemExit):
        transfer.parse_args(["--set", "test_root=/tmp", "--pretrained", str(tiny_data["tracker"])])  # the protocol's
    with pytest.raises(SystemExit, match="tuning runs missing"):
        transfer.main(quick_args(tiny_data, tmp_path / "empty", "--stage", "final"))
