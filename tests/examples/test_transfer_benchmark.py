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
    transfer.main(quick_args(tiny_data, out, "--steps", "3", "--jobs", "1", "--methods", "full"))
    assert "rgbt full" in capsys.readouterr().out
    assert json.loads((out / "runs" / "rgbt-full-seed0" / "bench.json").read_text())["settings"]["steps"] == 3


def test_sweep_and_bad_flags(tiny_data, tmp_path):
    args = transfer.parse_args(["--methods", "srft", "full", "--seeds", "0", "--modalities", "rgbt",
                                "--sweep", "lambda_prior", "0.1", "1"])
    labels = [run.label for run in transfer.plan(args)]
    assert labels == ["srft lambda_prior=0.1", "srft lambda_prior=1", "full"]
    assert transfer.plan(args)[0].settings["srft_overrides"] == {"lambda_prior": 0.1}
    with pytest.raises(SystemExit):
        transfer.parse_args(["--set", "not_a_field=1"])
    with pytest.raises(SystemExit):
        transfer.parse_args(["--sweep", "lambda_prior"])
