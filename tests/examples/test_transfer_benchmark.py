"""benchmarks/transfer.py --quick end to end on the tiny demo sets: runs in worker processes, the RGB tracker
evaluated once, the table, the JSON and the plot written, results reused when the settings match and rerun when not."""

from __future__ import annotations

import json

import pytest

from benchmarks import transfer


def quick_args(tiny_data, out, *extra: str) -> list[str]:
    return ["--quick", "--jobs", "2", "--out", str(out), "--srft", "prior_rank=4", "--set",
            f"data_root={tiny_data['rgbt']}", f"pretrained={tiny_data['tracker']}", f"rgb_root={tiny_data['rgb']}",
            "batch_size=2", "prior_batches=1", "eval_frames=6", *extra]


@pytest.mark.subprocess  # worker processes (--jobs 2)
def test_quick_run(tiny_data, tmp_path, capsys):
    out = tmp_path / "bench"
    table = transfer.main(quick_args(tiny_data, out, "--steps", "2"))
    rows = table["rgbt"]
    assert list(rows) == [transfer.BASELINE, "srft", "full", "lora"]
    assert all(row["n"] == 1 for row in rows.values())
    for row in rows.values():
        assert set(row["target"]) == set(row["rgb"]) == {"SR", "PR", "NPR"}
        assert all(0.0 <= mean <= 1.0 and std == 0.0 for mean, std in row["target"].values())
    records = json.loads((out / "transfer.json").read_text())["records"]
    assert [r["baseline_target"] is not None for r in records] == [True, False, False]  # the RGB tracker once
    assert {r["settings"]["steps"] for r in records} == {2}
    assert (out / "transfer_scatter.png").stat().st_size > 0
    assert "| srft |" in (out / "transfer.md").read_text()

    # same settings: every run is reused (bench.json untouched); other settings: run again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/bench.json")}
    transfer.main(quick_args(tiny_data, out, "--steps", "2", "--jobs", "1"))
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/bench.json")} == stamps
    capsys.readouterr()
    transfer.main(quick_args(tiny_data, out, "--steps", "3", "--jobs", "1", "--methods", "full", "srft",
                             "--sweep", "lambda_prior", "0.5", "2"))
    assert "rgbt full" in capsys.readouterr().out
    assert json.loads((out / "runs" / "rgbt-full-seed0" / "bench.json").read_text())["settings"]["steps"] == 3
    # the two sweep points share one prior: the first estimates it, the second loads it
    first, second = (json.loads((out / "runs" / f"rgbt-srft_lambda_prior{v}-seed0" / "bench.json").read_text())
                     for v in ("0.5", "2"))
    assert first["prior"].startswith("estimated")
    assert second["prior"] == f"loaded: {out / 'runs' / 'rgbt-srft_lambda_prior0.5-seed0' / 'prior'}"

    # --report runs nothing: it tables every run found, naming each row's SRFT overrides
    report = transfer.main(["--report", "--out", str(out)])["rgbt"]
    assert list(report) == [transfer.BASELINE, "srft prior_rank=4", "srft lambda_prior=0.5 prior_rank=4",
                            "srft lambda_prior=2 prior_rank=4", "full", "lora"]
    assert "total" not in (out / "transfer.md").read_text().splitlines()[0]


def test_sweep_and_bad_flags(tiny_data, tmp_path):
    args = transfer.parse_args(["--methods", "srft", "full", "--seeds", "0", "--modalities", "rgbt",
                                "--sweep", "lambda_prior", "0.1", "1"])
    labels = [run.label for run in transfer.plan(args)]
    assert labels == ["srft lambda_prior=0.1", "srft lambda_prior=1", "full"]
    runs = transfer.plan(args)
    assert runs[0].settings["srft_overrides"] == {"lambda_prior": 0.1}
    # lambda is not an estimation field: both points share a prior; other seeds, ranks or methods do not
    assert transfer.prior_key(runs[0]) == transfer.prior_key(runs[1]) is not None
    assert transfer.prior_key(runs[2]) is None  # full
    other = transfer.plan(transfer.parse_args(["--methods", "srft", "ewc", "l2sp", "srft-transfer-only", "--seeds", "1",
                                               "--modalities", "rgbt", "rgbd", "--srft", "prior_rank=4"]))
    keys = {(r.modality, r.method): transfer.prior_key(r) for r in other}
    assert keys[("rgbt", "srft")] == keys[("rgbd", "srft")]  # the demo RGB set calibrates every modality
    assert len({keys[("rgbt", "srft")], keys[("rgbt", "ewc")], transfer.prior_key(runs[0])}) == 3
    assert keys[("rgbt", "l2sp")] is None and keys[("rgbt", "srft-transfer-only")] is None
    with pytest.raises(SystemExit):
        transfer.parse_args(["--set", "not_a_field=1"])
    with pytest.raises(SystemExit):
        transfer.parse_args(["--sweep", "lambda_prior"])
