"""benchmarks/forgetting_probe.py: the groups partition a dual-stream tracker, a reset puts back exactly its group,
and the probe reads validation splits only, with resetting every group reproducing the start's scores."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import forgetting_probe as probe
from srft_peft.tracking import OSTrackRGBX, TrackerConfig
from srft_peft.tracking.checkpoint_io import load_tracker, save_tracker
from srft_peft.tracking.demo_data import make_demo_dataset


def dual_stream(seed: int = 0) -> OSTrackRGBX:
    torch.manual_seed(seed)
    rgb = OSTrackRGBX(TrackerConfig(variant="tiny", mode="rgb", template_size=32, search_size=64))
    return OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init="identity")


def perturbed(model: OSTrackRGBX, scale: float = 0.05) -> OSTrackRGBX:
    tuned = dual_stream()
    tuned.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(scale * torch.randn_like(p))
    return tuned


def test_groups_partition_and_reset_is_exact():
    start = dual_stream()
    groups = probe.group_names(start)
    assert sorted(k for keys in groups.values() for k in keys) == sorted(start.state_dict())
    assert all(groups.values())  # every group has parameters in a dual-stream tracker
    tuned = perturbed(start)
    reset = probe.with_reset(tuned, start.state_dict(), groups["X patch embedding"])
    for k, v in reset.state_dict().items():
        expected = start.state_dict()[k] if k in groups["X patch embedding"] else tuned.state_dict()[k]
        assert torch.equal(v, expected), k
    assert probe.relative_change(reset, start.state_dict(), groups["X patch embedding"]) == 0.0
    assert probe.relative_change(tuned, start.state_dict(), groups["RGB blocks"]) > 0.0
    # buffers (the head's BatchNorm step counters, running stats) are not weights: they do not enter the change
    head = groups["box head"]
    before = probe.relative_change(tuned, start.state_dict(), head)
    for buffer in tuned.buffers():
        buffer.fill_(10**6)
    params = dict(tuned.named_parameters())
    moved = sum(float(((params[k] - start.state_dict()[k]) ** 2).sum()) for k in head if k in params) ** 0.5
    size = sum(float((start.state_dict()[k] ** 2).sum()) for k in head if k in params) ** 0.5
    assert probe.relative_change(tuned, start.state_dict(), head) == pytest.approx(before) == pytest.approx(moved / size)


def test_rgb_tracker_is_refused():
    rgb = OSTrackRGBX(TrackerConfig(variant="tiny", mode="rgb", template_size=32, search_size=64))
    with pytest.raises(ValueError, match="needs a dual-stream tracker.*rgb"):
        probe.group_names(rgb)


def test_probe_reads_validation_only(tmp_path, monkeypatch, capsys):
    sizes = {"num_train": 1, "num_val": 2, "num_test": 1, "frames": 6}
    make_demo_dataset(tmp_path / "v2_rgbt", modality="rgbt", version=2, **sizes)
    make_demo_dataset(tmp_path / "v2_rgb", modality="rgb", version=2, num_pretrain=1, num_val=2, num_retention=1,
                      frames=6)
    torch.manual_seed(1)
    rgb = OSTrackRGBX(TrackerConfig(variant="tiny", mode="rgb", template_size=32, search_size=64))
    save_tracker(rgb, tmp_path / "rgb_tracker")
    start = OSTrackRGBX.from_rgb(load_tracker(tmp_path / "rgb_tracker"), "dual_stream", fusion_init="identity")
    run = tmp_path / "runs" / "rgbt-full-seed0"
    save_tracker(perturbed(start, 0.2), run / "model")
    (run / "bench.json").write_text(json.dumps({"modality": "rgbt"}))
    read = []
    original = probe.load_dataset

    def guarded(name, root, *a, **k):
        read.append(root.name)
        if root.name in ("test", "retention", "train", "pretrain"):
            raise AssertionError(f"not a validation split: {root}")
        return original(name, root, *a, **k)

    monkeypatch.setattr(probe, "load_dataset", guarded)
    out = tmp_path / "probe.md"
    results = probe.main(["--runs", str(run), "--pretrained", str(tmp_path / "rgb_tracker"), "--data-dir",
                          str(tmp_path), "--eval-frames", "0", "--out", str(out)])
    assert set(read) == {"val"}
    result = results[run.name]
    assert [r["group"] for r in result["rows"]] == [*probe.GROUPS, probe.ALL]
    control = result["rows"][-1]  # every group reset: the start's model, so the start's scores
    assert result["tuned"][0] + control["target_delta"] == pytest.approx(result["start"][0], abs=1e-9)
    assert result["tuned"][1] + control["rgb_delta"] == pytest.approx(result["start"][1], abs=1e-9)
    assert "| X patch embedding |" in out.read_text() and "| X patch embedding |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a finished"):
        probe.main(["--runs", str(tmp_path), "--pretrained", str(tmp_path / "rgb_tracker")])
