"""benchmarks/forgetting_regime.py: the regime check reads validation only, picks full fine-tuning's best target-val
lr and counts a modality as forgetting when its RGB val SR lies at least ``min_loss`` points under the start's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import srft_peft.tracking.train.data as train_data
from benchmarks import forgetting_regime


def record(modality: str, lr: float, target: list[float], rgb: list[float], start: tuple | None = None) -> dict:
    def seqs(values: list[float]) -> dict:
        return {f"s{i}": {"SR": v, "PR": v, "NPR": v} for i, v in enumerate(values)}

    r = {"modality": modality, "knobs": {"lr": lr}, "per_sequence": {"target": seqs(target), "rgb": seqs(rgb)}}
    if start is not None:
        r["start_target"], r["start_rgb"] = seqs(start[0]), seqs(start[1])
    return r


def test_the_best_target_lr_decides_and_the_loss_is_against_the_start():
    records = [record("rgbd", 2e-4, [0.40, 0.44], [0.50, 0.52], start=([0.30, 0.30], [0.55, 0.57])),
               record("rgbd", 8e-4, [0.50, 0.46], [0.40, 0.44]),  # best target (48.0): RGB 42.0 vs start 56.0
               record("rgbt", 4e-4, [0.50, 0.50], [0.58, 0.52], start=([0.45, 0.45], [0.57, 0.57]))]
    text, numbers = forgetting_regime.regime_table(records, min_loss=5.0)
    assert numbers["rgbd"]["best_lr"] == 8e-4
    assert numbers["rgbd"]["rgb_loss"] == pytest.approx(14.0)
    assert numbers["rgbd"]["forgets"] and not numbers["rgbt"]["forgets"]
    assert numbers["rgbt"]["rgb_loss"] == pytest.approx(2.0)
    assert "on 1 of 2 modalities (rgbd)" in text


@pytest.mark.slow
def test_quick_run_reads_validation_only(tiny_data, tmp_path, monkeypatch):
    original = train_data.load_dataset

    def load_dataset(name, root, *args, **kwargs):  # the held-out splits must not be read (jobs=1: this process)
        assert Path(root).resolve().name not in ("test", "retention"), root
        return original(name, root, *args, **kwargs)

    monkeypatch.setattr(train_data, "load_dataset", load_dataset)
    out = tmp_path / "regime"
    numbers = forgetting_regime.main(["--quick", "--out", str(out), "--lrs", "1e-4", "4e-4",
                                      "--pretrained", str(tiny_data["tracker"])])
    assert set(numbers) == {"rgbt"}
    saved = json.loads((out / "regime.json").read_text())
    assert saved["modalities"]["rgbt"]["best_lr"] in (1e-4, 4e-4)
