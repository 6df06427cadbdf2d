"""benchmarks/prior_balance.py: the recorded norms are the task gradient and the prior gradient the step adds (zero
for full fine-tuning and at the first step, growing with lambda), the training is unchanged by the recording, and
only validation splits are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import srft_peft.tracking.train.data as train_data
import srft_peft.tracking.train.finetune as finetune_module
from benchmarks import prior_balance
from benchmarks.transfer import QUICK_SIZES


def test_norms_and_validation_only(tiny_data, tmp_path, monkeypatch):
    read = []
    original = train_data.load_dataset

    def guarded(name, root, *a, **k):
        root = Path(root).resolve()  # the tune view's "test" is a link to RGB val
        read.append(root.name)
        if root.name in ("test", "retention"):
            raise AssertionError(f"held-out split read: {root}")
        return original(name, root, *a, **k)

    monkeypatch.setattr(train_data, "load_dataset", guarded)
    from benchmarks import transfer

    transfer.build_data(tmp_path / "data", ["rgbt"], QUICK_SIZES)
    clip = finetune_module.clip_gradients
    results = prior_balance.main(["--pretrained", str(tiny_data["tracker"]), "--modalities", "rgbt", "--lr", "1e-3",
                                  "--lambdas", "1", "100", "--steps", "3", "--batch-size", "2", "--prior-batches",
                                  "1", "--eval-frames", "6", "--data-dir", str(tmp_path / "data"), "--out",
                                  str(tmp_path / "out")])
    assert finetune_module.clip_gradients is clip  # restored
    assert set(read) <= {"train", "val", "pretrain"}
    full, weak, strong = results["rgbt"]
    assert [len(r["norms"]) for r in results["rgbt"]] == [3, 3, 3]
    assert all(p == 0.0 for _, p in full["norms"]) and all(t > 0 for t, _ in full["norms"])
    assert weak["norms"][0][1] == 0.0 and weak["norms"][1][1] > 0.0  # theta = theta0 at the first step
    # same seed and data: the task gradient of the first step is the same, the prior gradient scales with lambda
    assert weak["norms"][0][0] == pytest.approx(strong["norms"][0][0], rel=1e-6)
    assert strong["norms"][1][1] == pytest.approx(100 * weak["norms"][1][1], rel=1e-4)
    table = (tmp_path / "out" / "prior_balance.md").read_text()
    assert "srft-prior-only λ=100" in table and "| full |" in table
    assert json.loads((tmp_path / "out" / "prior_balance.json").read_text())["rgbt"][1]["knobs"]["lambda_prior"] == 1


def test_bad_lambda(tiny_data):
    with pytest.raises(SystemExit):
        prior_balance.main(["--pretrained", str(tiny_data["tracker"]), "--lambdas", "0"])
