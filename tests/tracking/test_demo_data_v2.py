"""Demo data v2: disjoint source pools, per-modality hard cases, powered split sizes, real layouts."""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np
import pytest

import srft_peft.tracking.demo_data as dm
from srft_peft.tracking.datasets import load_dataset
from srft_peft.tracking.demo_data import (
    DEMO_LAYOUTS,
    V2_SPLITS,
    DemoConfig,
    _render_v2,
    _v2_image,
    load_demo_dataset,
    make_demo_dataset,
)

SIZES = {
    "rgbt": dict(num_train=2, num_val=2, num_test=3),
    "rgbd": dict(num_train=2, num_val=2, num_test=3),
    "rgbe": dict(num_train=2, num_val=2, num_test=3),
    "rgb": dict(num_pretrain=3, num_val=2, num_retention=3),
}
SMALL = dict(frames=12, image_size=(64, 48), seed=0, version=2)


def _manifest(root):
    return json.loads((root / "MANIFEST.json").read_text())


@pytest.fixture(scope="module")
def v2_sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("demo_v2")
    return {m: make_demo_dataset(base / m, modality=m, **SIZES[m], **SMALL) for m in DEMO_LAYOUTS}


def _overlap(a, b):
    """Whether two ``[source, x1, y1, x2, y2]`` boxes share a source pixel."""
    return a[0] == b[0] and a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]


def _crops_by_pool(manifests):
    """``{pool: [crop, ...]}`` over every scene (objects, clutter, backgrounds) of every modality."""
    crops = {}
    for manifest in manifests:
        for split, names in manifest["sequences"].items():
            pool = manifest["split_pools"][split]
            for name in names:
                scene = manifest["scenes"][name]
                crops.setdefault(pool, []).extend(scene["objects"] + scene["backgrounds"])
    return crops


def test_pools_are_disjoint_in_the_manifest_and_in_source_pixels(v2_sets):
    manifests = [_manifest(root) for root in v2_sets.values()]
    pools = manifests[0]["pools"]
    assert all(m["pools"] == pools for m in manifests)  # one fixed assignment for every modality
    assert set(pools) == {"pretrain", "train", "val", "test", "retention"}
    regions = {p: pools[p]["objects"] + pools[p]["backgrounds"] for p in pools}
    for p, q in itertools.combinations(pools, 2):
        assert not any(_overlap(a, b) for a in regions[p] for b in regions[q]), (p, q)
    assert len(pools["test"]["objects"]) >= 20 and len(pools["train"]["objects"]) >= 5  # many distinct objects

    crops = _crops_by_pool(manifests)
    assert set(crops) == set(pools)
    for pool, pool_crops in crops.items():  # every crop lies inside a region of its own pool
        for crop in pool_crops:
            assert any(c[0] == crop[0] and c[1] <= crop[1] and c[2] <= crop[2] and crop[3] <= c[3] and crop[4] <= c[4]
                       for c in regions[pool]), (pool, crop)
    for p, q in itertools.combinations(crops, 2):
        assert not any(_overlap(a, b) for a in crops[p] for b in crops[q]), (p, q)

    # Pixels: the source pixels read by each pool, and the content of each crop, are never shared by two pools.
    used, hashes = {}, {}
    for pool, pool_crops in crops.items():
        for name, x1, y1, x2, y2 in pool_crops:
            mask = used.setdefault((pool, name), np.zeros(_v2_image(name).shape[:2], bool))
            mask[y1:y2, x1:x2] = True
            pixels = np.ascontiguousarray(_v2_image(name)[y1:y2, x1:x2])
            hashes.setdefault(pool, set()).add(hashlib.sha256(pixels.tobytes()).hexdigest())
    for (p, name), mask in used.items():
        for (q, other), other_mask in used.items():
            if p != q and name == other:
                assert not (mask & other_mask).any(), (p, q, name)
    for p, q in itertools.combinations(hashes, 2):
        assert not hashes[p] & hashes[q], (p, q)
    test_targets = {m["scenes"][n]["target"][0] for m in manifests for n in m["sequences"].get("test", [])}
    assert len(test_targets) >= 2  # test targets come from several sources


@pytest.mark.parametrize("split", ["train", "test", "retention"])
def test_scenes_read_no_source_pixel_outside_their_pool(monkeypatch, split):
    """Independent of the manifest: every source pixel outside ``split``'s pool is NaN, and NaN would reach the frame
    from any pixel a target, distractor, clutter piece or background read (even where a silhouette hides it)."""
    pools = dm._v2_pools()  # computed from the clean images, before they are poisoned
    poisoned = {}
    for name in dm._V2_SOURCES:
        image = np.full_like(dm._v2_image(name), np.nan)
        for source, x1, y1, x2, y2 in pools[split]["objects"] + pools[split]["backgrounds"]:
            if source == name:
                image[y1:y2, x1:x2] = dm._v2_image(name)[y1:y2, x1:x2]
        poisoned[name] = image
    monkeypatch.setattr(dm, "_v2_image", poisoned.__getitem__)
    modalities = ["rgb"] if split == "retention" else ["rgbt", "rgbd", "rgbe"]
    with np.errstate(invalid="ignore"):
        for modality, index in itertools.product(modalities, range(4)):
            scene, _ = dm._render_v2(0, modality, split, index, 6, (64, 48))
            assert all(np.isfinite(frame.lum).all() for frame in scene), (modality, index)
    every = {name: np.concatenate([np.full_like(image[..., :3], np.nan), np.ones_like(image[..., 3:])], axis=2)
             for name, image in poisoned.items()}
    monkeypatch.setattr(dm, "_v2_image", every.__getitem__)
    with np.errstate(invalid="ignore"):  # the check can fail: with every colour poisoned, NaN shows
        assert not np.isfinite(next(dm._render_v2(0, "rgbt", split if split != "retention" else "val", 0, 6,
                                                  (64, 48))[0]).lum).all()


@pytest.mark.parametrize("modality", ["rgbt", "rgbd", "rgbe", "rgb"])
def test_every_split_is_read_by_the_real_loader_with_the_configured_size(v2_sets, modality):
    root = v2_sets[modality]
    manifest = _manifest(root)
    assert manifest["generator_version"] == 2 and manifest["params"]["version"] == 2
    expected = {split[4:]: n for split, n in SIZES[modality].items()}
    assert manifest["split_sizes"] == expected and tuple(manifest["sequences"]) == tuple(sorted(expected))
    assert set(V2_SPLITS[modality]) == set(expected)
    channels = 3 if modality == "rgb" else 6
    for split, n in expected.items():
        seqs = load_demo_dataset(modality, split, root=root, **SIZES[modality], **SMALL)
        assert [s.name for s in seqs] == manifest["sequences"][split] and len(seqs) == n
        for seq in seqs:
            assert len(seq) == 12 and seq.modality == modality
            assert seq.load_frame(0).shape == (48, 64, channels) and seq.visible[0]
            vis = seq.gt[seq.visible]
            assert (vis[:, :2] >= 0).all() and (vis[:, 0] + vis[:, 2] <= 64).all() and (vis[:, 1] + vis[:, 3] <= 48).all()
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'val', 'test'\), got 'pretrain'"):
        load_demo_dataset("rgbt", "pretrain", root=root, **SIZES["rgbt"], **SMALL)


def test_deterministic_and_modalities_show_different_scenes(tmp_path, v2_sets):
    again = make_demo_dataset(tmp_path / "again", modality="rgbt", **SIZES["rgbt"], **SMALL)
    assert _manifest(again)["content_hash"] == _manifest(v2_sets["rgbt"])["content_hash"]
    assert _manifest(again)["scenes"] == _manifest(v2_sets["rgbt"])["scenes"]
    other = make_demo_dataset(tmp_path / "seed1", modality="rgbt", **SIZES["rgbt"], **{**SMALL, "seed": 1})
    assert _manifest(other)["content_hash"] != _manifest(again)["content_hash"]
    first = {m: load_dataset(DEMO_LAYOUTS[m], v2_sets[m] / "test")[0].load_rgb(0) for m in ("rgbt", "rgbd", "rgbe")}
    assert not np.array_equal(first["rgbt"], first["rgbd"]) and not np.array_equal(first["rgbd"], first["rgbe"])


def test_default_sizes_give_power():
    x = DemoConfig(modality="rgbd", version=2)
    assert x.split_sizes == {"train": 8, "val": 24, "test": 80} and x.frames == 24 and x.image_size == (128, 96)
    rgb = DemoConfig(modality="rgb", version=2)
    assert rgb.split_sizes == {"pretrain": 96, "val": 24, "retention": 40}
    assert DemoConfig().split_sizes == {"train": 8, "test": 4} and DemoConfig().version == 1  # v1 stays the default


def _frames(modality, index, frames=24, size=(96, 72), split="test"):
    scene, record = _render_v2(0, modality, split, index, frames, size)
    frames = list(scene)[1:]  # drop the leading frame (it only feeds the events)
    for t, frame in enumerate(frames):
        frame.t = t
    return frames, record


def _box_mask(shape, box, inset=1):
    x, y, w, h = box
    mask = np.zeros(shape, bool)
    mask[y + inset : y + h - inset, x + inset : x + w - inset] = True
    return mask


def test_thermal_crossovers_and_hot_distractors():
    crossovers, gaps = 0, []
    for index in range(16):
        frames, record = _frames("rgbt", index)
        attrs = record["attributes"]
        if attrs.get("crossover_frames"):
            hotter = []  # share of background pixels hotter than the target's mean
            for frame in frames:
                if frame.box is not None:
                    mask = _box_mask(frame.thermal.shape, frame.box)
                    hotter.append((frame.thermal[~mask] > frame.thermal[mask].mean()).mean())
                else:
                    hotter.append(np.nan)
            inside = [hotter[t] for t in attrs["crossover_frames"] if np.isfinite(hotter[t])]
            outside = [h for t, h in enumerate(hotter) if t not in attrs["crossover_frames"] and np.isfinite(h)]
            assert inside and max(inside) > 0.25  # the target is not the hottest thing in the frame
            assert np.median(outside) < np.median(inside)
            crossovers += 1
        if "hot_distractor" in attrs["roles"]:
            window = attrs.get("crossover_frames") or [-99]
            for frame in frames:
                if frame.box is None or min(window) - 3 <= frame.t <= max(window) + 3:  # away from crossovers
                    continue
                d_mask = _box_mask(frame.thermal.shape, dict(frame.boxes)["hot_distractor"])
                t_mask = _box_mask(frame.thermal.shape, frame.box)
                if (d_mask & t_mask).any():
                    continue
                d_heat, t_heat = (np.percentile(frame.thermal[m], 95) for m in (d_mask, t_mask))
                gaps.append(abs(d_heat - t_heat))  # as hot as the target (thin shapes lose some heat to the blur) ...
                assert d_heat > np.median(frame.thermal[~(d_mask | t_mask)]) + 60  # ... and much hotter than the rest
            assert record["objects"][1] != record["target"]  # another object: only appearance separates them
    assert crossovers >= 2 and len(gaps) >= 20 and max(gaps) < 40 and np.median(gaps) < 15


def test_depth_near_clutter_and_rgbe_darkness_and_fast_motion():
    clutter = 0
    for index in range(6):
        frames, record = _frames("rgbd", index)
        if "clutter" not in record["attributes"]["roles"]:
            continue
        for frame in frames[:3]:
            boxes = [b for role, b in frame.boxes if role == "clutter"]
            if frame.box is None:
                continue
            near = [np.median(frame.depth[_box_mask(frame.depth.shape, b, 3) & (frame.depth > 0)]) for b in boxes]
            assert min(near) < record["attributes"]["depth_mm"]["target"] - 300  # something is nearer than the target
            clutter += 1
    assert clutter >= 3

    dark = fast = 0
    for index in range(10):
        frames, record = _frames("rgbe", index)
        attrs = record["attributes"]
        if attrs["dark"]:
            assert np.mean([f.rgb.mean() for f in frames]) < 40
            dark += 1
        if attrs["fast_motion"]:
            centres = np.array([[b[0] + b[2] / 2, b[1] + b[3] / 2] for b in (f.box for f in frames) if b is not None])
            assert np.abs(np.diff(centres, axis=0)).max() >= 7  # a burst of fast motion
            fast += 1
    assert dark >= 2 and fast >= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(version=3), "DemoConfig.version must be one of [1, 2], got 3"),
        (dict(num_val=5), "DemoConfig.num_val is not a split of version-1 'rgbt' sets (splits: train, test), got 5"),
        (dict(version=2, modality="rgb", num_train=8), "DemoConfig.num_train is not a split of version-2 'rgb' sets"),
        (dict(version=2, num_test=-1), "DemoConfig.num_test must be a non-negative integer, got -1"),
        (dict(version=2, num_val=2.5), "DemoConfig.num_val must be a non-negative integer, got 2.5"),
        (dict(version=2, image_size=(16, 16)), "DemoConfig.image_size must be (width, height) with both >= 32, got (16"),
        (dict(version=2, image_size="big"), "DemoConfig.image_size must be (width, height) with both >= 32, got 'big'"),
        (dict(version=2, seed=-1), "DemoConfig.seed must be a non-negative integer, got -1"),
        (dict(version=2, frames=1), "DemoConfig.frames must be an integer >= 2, got 1"),
    ],
)
def test_bad_parameters_are_rejected_before_anything_is_written(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        make_demo_dataset(tmp_path / "x", **kwargs)
    assert message in str(err.value)
    assert not (tmp_path / "x").exists()


def test_switching_a_folder_from_v1_to_v2_leaves_only_the_v2_splits(tmp_path):
    root = make_demo_dataset(tmp_path / "rgb", modality="rgb", num_train=1, num_test=1, frames=4, image_size=(48, 32))
    assert (root / "train").is_dir() and (root / "test").is_dir()
    make_demo_dataset(root, modality="rgb", num_pretrain=1, num_val=1, num_retention=1, frames=4, image_size=(48, 32),
                      version=2)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["pretrain", "retention", "val"]
    assert len(load_dataset("rgb", root / "retention")) == 1
