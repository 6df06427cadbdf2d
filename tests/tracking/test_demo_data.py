"""Demo generator: deterministic, idempotent, written in the real layouts and read back by the real loaders."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from srft_peft.tracking.datasets import load_dataset
from srft_peft.tracking.demo_data import (
    DEMO_LAYOUTS,
    _events,
    default_demo_root,
    load_demo_dataset,
    make_demo_dataset,
    render_sequence,
)

SMALL = dict(num_train=2, num_test=1, frames=12, image_size=(64, 48), seed=0)


def _manifest(root):
    return json.loads((root / "MANIFEST.json").read_text())


@pytest.mark.parametrize("modality", ["rgbt", "rgbd", "rgbe", "rgb"])
def test_demo_set_is_deterministic_and_read_by_its_real_loader(tmp_path, modality):
    a = make_demo_dataset(tmp_path / "a", modality=modality, **SMALL)
    b = make_demo_dataset(tmp_path / "b", modality=modality, **SMALL)
    assert _manifest(a)["content_hash"] == _manifest(b)["content_hash"]
    assert _manifest(a)["layout"] == DEMO_LAYOUTS[modality]
    train = load_dataset(DEMO_LAYOUTS[modality], a / "train")
    test = load_dataset(DEMO_LAYOUTS[modality], a / "test")
    assert len(train) == 2 and len(test) == 1
    channels = 3 if modality == "rgb" else 6
    for seq in train + test:
        assert len(seq) == 12 and seq.modality == modality
        assert seq.load_frame(0).shape == (48, 64, channels)
        assert seq.visible[0]
        vis = seq.gt[seq.visible]
        assert (vis[:, 0] >= 0).all() and (vis[:, 0] + vis[:, 2] <= 64).all()
        assert (vis[:, 1] >= 0).all() and (vis[:, 1] + vis[:, 3] <= 48).all()


def test_layout_details(tmp_path):
    root = make_demo_dataset(tmp_path / "t", modality="rgbt", **SMALL)
    seq_dir = root / "train" / "rgbt_train_000"
    text = (seq_dir / "visible.txt").read_bytes()
    assert text.count(b"\r\n") == 12 and b"," in text  # LasHeR: comma-separated, CRLF
    assert (seq_dir / "infrared" / "i000000.jpg").is_file() and (seq_dir / "visible" / "v000011.jpg").is_file()
    root = make_demo_dataset(tmp_path / "d", modality="rgbd", **SMALL)
    seq_dir = root / "train" / "rgbd_train_000"
    depth = Image.open(seq_dir / "depth" / "00000001.png")  # 1-based, 16-bit millimetres
    assert depth.mode.startswith("I;16") and np.asarray(depth).max() > 1000
    assert not (seq_dir / "color" / "00000000.jpg").exists()
    root = make_demo_dataset(tmp_path / "e", modality="rgbe", **SMALL)
    seq_dir = root / "train" / "rgbe_train_000"
    labels = (seq_dir / "absent_label.txt").read_text().split()
    gt_lines = (seq_dir / "groundtruth.txt").read_text().splitlines()
    assert len(labels) == len(gt_lines) == 12
    assert all((label == "0") == (line == "0,0,0,0") for label, line in zip(labels, gt_lines))


def test_idempotent_and_rebuilt_when_parameters_change(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", modality="rgb", **SMALL)
    manifest = (root / "MANIFEST.json").stat().st_mtime_ns
    frame = root / "train" / "rgb_train_000" / "img" / "0001.jpg"
    frame_time = frame.stat().st_mtime_ns
    assert make_demo_dataset(tmp_path / "demo", modality="rgb", **SMALL) == root
    assert (root / "MANIFEST.json").stat().st_mtime_ns == manifest and frame.stat().st_mtime_ns == frame_time
    old_hash = _manifest(root)["content_hash"]
    make_demo_dataset(tmp_path / "demo", modality="rgb", **{**SMALL, "frames": 10})
    assert _manifest(root)["params"]["frames"] == 10 and _manifest(root)["content_hash"] != old_hash
    assert len(load_dataset("rgb", root / "train")[0]) == 10
    assert not any(p.name.startswith(".build-") for p in root.iterdir())


def test_refuses_to_overwrite_foreign_data_and_checks_parameters(tmp_path):
    (tmp_path / "mine" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="no MANIFEST.json"):
        make_demo_dataset(tmp_path / "mine", modality="rgb", **SMALL)
    with pytest.raises(ValueError, match="modality must be one of"):
        make_demo_dataset(tmp_path / "x", modality="rgbx")
    with pytest.raises(ValueError, match="frames must be an integer >= 2, got 1"):
        make_demo_dataset(tmp_path / "x", frames=1)


def test_default_root_and_load_demo_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("SRFT_DEMO_ROOT", str(tmp_path / "cache"))
    assert default_demo_root() == tmp_path / "cache"
    seqs = load_demo_dataset("rgbe", "test", **SMALL)
    assert (tmp_path / "cache" / "rgbe" / "MANIFEST.json").is_file() and len(seqs) == 1
    monkeypatch.delenv("SRFT_DEMO_ROOT")
    assert default_demo_root().parts[-3:] == (".cache", "srft_peft", "demo")


def test_x_modality_shows_the_target_when_rgb_is_dark():
    """Some scenes are low-light: the RGB target is hard to see while the thermal target is hot."""
    found = 0
    for index in range(12):
        frames = list(render_sequence(0, "train", index, 3, (64, 48)))
        frame = frames[-1]
        if frame.rgb.mean() > 40 or frame.box is None:
            continue
        x, y, w, h = frame.box
        mask = np.zeros(frame.thermal.shape, bool)
        mask[y + 1 : y + h - 1, x + 1 : x + w - 1] = True
        rgb_gray = frame.rgb.mean(axis=2)
        thermal_contrast = frame.thermal[mask].mean() - frame.thermal[~mask].mean()
        rgb_contrast = abs(rgb_gray[mask].mean() - rgb_gray[~mask].mean())
        assert thermal_contrast > 60 and rgb_contrast < 30
        depth_target = np.median(frame.depth[mask][frame.depth[mask] > 0])
        assert depth_target < np.median(frame.depth[~mask & (frame.depth > 0)])  # target nearer
        found += 1
    assert found >= 2


def test_version_1_output_is_unchanged(tmp_path):
    """v1 stays the default and renders what it rendered before v2 was added (hash taken on the original generator:
    raw arrays, so JPEG/PNG encoder versions do not matter); its manifest keeps exactly its original parameters."""
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for index in range(3):
            prev, rng = None, np.random.default_rng(5)
            for frame in render_sequence(3, split, index, 10, (64, 48)):
                for array in (frame.rgb, frame.lum.astype(np.float32), frame.thermal, frame.depth):
                    digest.update(array.tobytes())
                digest.update(repr(frame.box).encode())
                if prev is not None:
                    digest.update(_events(prev, frame.lum, rng).tobytes())
                prev = frame.lum
    assert digest.hexdigest() == "e4847ddb191dd08b1c6095cecafd56554fc1b18d55c1edf2966542364517e7a9"
    root = make_demo_dataset(tmp_path / "v1", modality="rgbe", **SMALL)
    manifest = _manifest(root)
    assert manifest["generator_version"] == 1
    assert sorted(p.name for p in root.iterdir()) == ["MANIFEST.json", "test", "train"]
    assert manifest["params"] == {"modality": "rgbe", "num_train": 2, "num_test": 1, "frames": 12, "image_size": [64, 48],
                                  "seed": 0}
    assert (root / "train" / "rgbe_train_000" / "vis_imgs" / "frame0000.bmp").is_file()
