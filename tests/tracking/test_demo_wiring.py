"""What a fine-tune uses by default: the shipped demo tracker (nothing trained) and demo data v2 (RGB-X train / val /
test, the RGB set's pretrain / retention for the prior and the retention test). The v2 sets are built small here
(the same code path, smaller sizes) so the tests stay fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from srft_peft.tracking import demo_data, load_demo_rgb_tracker
from srft_peft.tracking.demo_tracker import demo_tracker_recipe
from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx, load_pretrained_rgb
from srft_peft.tracking.train import data as train_data
from srft_peft.tracking.train import pretrain as train_pretrain
from srft_peft.tracking.train.finetune import rgb_sequences

SMALL = {"frames": 6, "image_size": (64, 48)}
SMALL_RGB = {"modality": "rgb", "version": 2, "seed": 0, "num_pretrain": 2, "num_val": 1, "num_retention": 2, **SMALL}


def _no_training(*args, **kwargs):
    raise AssertionError("the default starting tracker must not be trained")


@pytest.fixture
def small_demo(tmp_path, monkeypatch):
    """Demo root and cache in tmp_path; v2 sets built with few short sequences; training refused."""
    monkeypatch.setenv("SRFT_DEMO_ROOT", str(tmp_path / "demo"))
    monkeypatch.setenv("SRFT_CACHE_DIR", str(tmp_path / "cache"))
    real = demo_data.make_demo_dataset

    def small(root, **kw):
        if kw["modality"] == "rgb":
            return real(root, **kw)
        sizes = {"num_val": 1} if kw.get("version", 1) == 2 else {}  # (v1 has no val split)
        return real(root, **kw, num_train=2, num_test=1, **sizes, **SMALL)

    monkeypatch.setattr(train_data, "make_demo_dataset", small)
    monkeypatch.setattr(train_data, "DEMO_RGB", SMALL_RGB, raising=False)
    monkeypatch.setattr(train_pretrain, "pretrain_rgb", _no_training)
    monkeypatch.setattr(train_pretrain, "ensure_pretrained_rgb", _no_training)
    return tmp_path


def _manifest(root: Path) -> dict:
    return json.loads((root / "MANIFEST.json").read_text())


def test_default_pretrained_is_the_shipped_tracker_without_training(small_demo):
    model, desc = load_pretrained_rgb(None, progress=False)
    assert desc == f"demo:shipped (sha256 {demo_tracker_recipe()['sha256']})"
    shipped = load_demo_rgb_tracker()
    assert model.config == shipped.config and model.config.mode == "rgb"
    for (name, a), b in zip(model.state_dict().items(), shipped.state_dict().values()):
        assert (a.dtype == torch.float32 or not a.is_floating_point()) and torch.equal(a, b), name
    assert not (small_demo / "cache").exists() and not (small_demo / "demo").exists()  # nothing trained or built


def test_demo_set_roots_keep_versions_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("SRFT_DEMO_ROOT", str(tmp_path))
    assert demo_data.demo_set_root("rgbt") == tmp_path / "rgbt"  # v1, as before
    assert demo_data.demo_set_root("rgbt", 2) == tmp_path / "v2" / "rgbt"
    root = demo_data.make_demo_dataset(modality="rgbd", version=2, num_train=1, num_val=1, num_test=1, **SMALL)
    assert root == tmp_path / "v2" / "rgbd" and _manifest(root)["generator_version"] == 2


def test_default_rgbx_data_is_demo_v2_with_validation(small_demo):
    splits = train_data.load_rgbx_splits(FinetuneConfig(modality="rgbe"))
    root = small_demo / "demo" / "v2" / "rgbe"
    manifest = _manifest(root)
    assert manifest["generator_version"] == 2 and splits.description == f"demo v2:{root}"
    for split in ("train", "val", "test"):
        assert [s.name for s in getattr(splits, split)] == manifest["sequences"][split]
    assert splits.val and all(s.dataset == "visevent" for s in splits.test)


def test_default_rgb_side_is_demo_v2_pretrain_and_retention(small_demo):
    rgb_root = small_demo / "demo" / "v2" / "rgb"
    cfg = FinetuneConfig()
    calibration = rgb_sequences(cfg, "train", True, [])
    retention = rgb_sequences(cfg, "test", True, [])
    manifest = _manifest(rgb_root)
    assert manifest["generator_version"] == 2
    assert [s.name for s in calibration] == manifest["sequences"]["pretrain"]
    assert [s.name for s in retention] == manifest["sequences"]["retention"]
    assert [s.name for s in train_data.demo_rgb_split("val")] == manifest["sequences"]["val"]
    with pytest.raises(ValueError, match="split must be one of .*got 'retention'"):
        train_data.demo_rgb_split("retention")


def test_default_finetune_runs_from_the_shipped_tracker_on_v2(small_demo, accelerate_state):
    results = finetune_rgbx(FinetuneConfig(method="srft", output_dir=str(small_demo / "run"), steps=1, batch_size=2,
                                           prior_batches=1, save_every=0, report_to=None, progress=False,
                                           eval_frames=4, srft_overrides={"prior_rank": 4}))
    assert results["pretrained"].startswith("demo:shipped (sha256 ")
    assert results["data"] == f"demo v2:{small_demo / 'demo' / 'v2' / 'rgbt'}"
    retention = _manifest(small_demo / "demo" / "v2" / "rgb")["sequences"]["retention"]
    assert sorted(results["per_sequence"]["retention"]) == sorted(retention)  # evaluate_rgb is on by default
    assert {"SR", "PR", "NPR"} <= set(results["rgb_metrics"]) and "baseline_rgb_metrics" in results
