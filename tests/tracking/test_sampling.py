"""OSTrack-style pair sampling: crop mapping by hand, determinism, boxes in [0, 1] that match the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srft_peft.tracking.crops import box_in_window, crop_and_resize, crop_window
from srft_peft.tracking.datasets import Sequence
from srft_peft.tracking.sampling import IMAGENET_MEAN, IMAGENET_STD, TrackingPairDataset, collate

SIZE = dict(template_size=32, search_size=64)


def test_crop_mapping_by_hand():
    # A white 20x20 square at (40, 40) on a black 100x100 image.
    image = np.zeros((100, 100, 6), np.uint8)
    image[40:60, 40:60] = 255
    box = np.array([40.0, 40.0, 20.0, 20.0])
    # Template: side = sqrt(20 * 20) * 2 = 40 centred on (50, 50) -> window [30, 70) x [30, 70).
    window = crop_window(box, 2.0, exact=True)
    assert window == (30.0, 30.0, 40.0)
    # Normalised top-left box: ((40 - 30) / 40, (40 - 30) / 40, 20 / 40, 20 / 40).
    assert box_in_window(box, window, clip=True).tolist() == [0.25, 0.25, 0.5, 0.5]
    # Resized to 128: the square must cover output pixels 32..95 (0.25 * 128 .. 0.75 * 128 - 1).
    crop = crop_and_resize(image, window, 128)
    assert crop.shape == (6, 128, 128) and crop.dtype == torch.float32
    rows, cols = torch.nonzero(crop[0] > 127.5, as_tuple=True)
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (32, 95, 32, 95)
    assert torch.equal(crop[0], crop[5])  # all channels cropped alike
    # Search-style window of factor 4 off the image border: the outside is zero and the box is clipped to [0, 1].
    window = (-50.0, -50.0, 100.0)
    crop = crop_and_resize(image, window, 50)
    rows, cols = torch.nonzero(crop[0] > 127.5, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (45, 49)  # square [40, 60) -> [45, 55), cut at the crop edge
    assert box_in_window(box, window, clip=True).tolist() == pytest.approx([0.9, 0.9, 0.1, 0.1])
    assert box_in_window(box, window, clip=False).tolist() == pytest.approx([0.9, 0.9, 0.2, 0.2])


def _square_sequence(tmp_path: Path, n: int = 12, modality: str = "rgbt") -> Sequence:
    """A white target on a dark gradient, moving right; the X frame is the inverted image."""
    rng = np.random.default_rng(0)
    frames_rgb, frames_x, gt = [], [], []
    for i in range(n):
        img = np.tile(np.linspace(0, 60, 160, dtype=np.float32)[None, :, None], (120, 1, 3))
        x, y, w, h = 30 + 5 * i, 40 + int(rng.integers(0, 10)), 24 + i % 3, 18
        img[y : y + h, x : x + w] = 255
        rgb_path, x_path = tmp_path / f"rgb{i}.png", tmp_path / f"x{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(rgb_path)
        Image.fromarray(255 - img.astype(np.uint8)).save(x_path)
        frames_rgb.append(rgb_path)
        frames_x.append(x_path)
        gt.append([x, y, w, h])
    gt = np.asarray(gt, float)
    gt[3] = np.nan  # one absent frame: never sampled
    return Sequence("squares", frames_rgb, frames_x if modality != "rgb" else [], gt, modality=modality)


def test_items_shapes_normalisation_and_boxes(tmp_path):
    seq = _square_sequence(tmp_path)
    ds = TrackingPairDataset([seq], samples_per_epoch=24, seed=3, **SIZE)
    assert len(ds) == 24
    mean = torch.tensor(IMAGENET_MEAN * 2).view(6, 1, 1)
    std = torch.tensor(IMAGENET_STD * 2).view(6, 1, 1)
    for index in range(len(ds)):
        item = ds[index]
        assert set(item) == {"template", "search", "template_box", "search_box"}
        assert item["template"].shape == (6, 32, 32) and item["search"].shape == (6, 64, 64)
        assert item["template"].dtype == torch.float32 and item["search_box"].dtype == torch.float32
        box = item["search_box"]
        assert box.shape == (4,) and (box >= 0).all() and (box[:2] + box[2:] <= 1 + 1e-6).all()
        # Template crops are centred on the target with side 2 * sqrt(wh).
        tb = item["template_box"]
        assert (tb[:2] + tb[2:] / 2).tolist() == pytest.approx([0.5, 0.5])
        assert float(tb[2] * tb[3]) == pytest.approx(0.25, rel=1e-5)
        # The bright target pixels in the (de-normalised) search crop are where search_box says.
        pixels = item["search"] * std + mean  # [0, 1]
        mask = pixels[0] > 0.9
        rows, cols = torch.nonzero(mask, as_tuple=True)
        x1, y1, w, h = (box * 64).tolist()
        assert cols.min().item() == pytest.approx(x1, abs=1.01) and rows.min().item() == pytest.approx(y1, abs=1.01)
        assert cols.max().item() + 1 == pytest.approx(x1 + w, abs=1.01)
        assert rows.max().item() + 1 == pytest.approx(y1 + h, abs=1.01)
        # X channels carry the inverted image: dark where the target is.
        assert (pixels[3][mask] < 0.1).all()
    # Frame choice: visible frames only, search after the template and at most max_gap later.
    for index in range(200):
        k, t, s = ds.sample_frames(index)
        assert k == 0 and t != 3 and s != 3
        if t < 11:  # "causal": a later search frame; only the last visible frame falls back to |s - t| <= max_gap
            assert 0 < s - t <= 200


def test_max_gap_and_rgb_only(tmp_path):
    seq = _square_sequence(tmp_path)
    ds = TrackingPairDataset([seq], samples_per_epoch=50, max_gap=2, rgb_only=True, **SIZE)
    for index in range(50):
        _, t, s = ds.sample_frames(index)
        assert abs(s - t) <= 2
    assert ds[0]["search"].shape == (3, 64, 64)
    rgb_seq = _square_sequence(tmp_path, modality="rgb")
    with pytest.raises(ValueError, match="pass rgb_only=True"):
        TrackingPairDataset([rgb_seq], samples_per_epoch=4)
    assert TrackingPairDataset([rgb_seq], samples_per_epoch=4, rgb_only=True, **SIZE)[1]["template"].shape[0] == 3
    with pytest.raises(ValueError, match="template_size must be a positive integer, got 0"):
        TrackingPairDataset([seq], template_size=0)
    with pytest.raises(TypeError, match="unknown TrackingPairDataset option"):
        TrackingPairDataset([seq], serch_size=64)


def test_deterministic_per_seed_epoch_index(tmp_path):
    seq = _square_sequence(tmp_path)
    a = TrackingPairDataset([seq], samples_per_epoch=8, seed=5, **SIZE)
    b = TrackingPairDataset([seq], samples_per_epoch=8, seed=5, **SIZE)
    # Same item whatever the access order.
    later = [b[i] for i in reversed(range(8))][::-1]
    for i in range(8):
        for key in ("template", "search", "search_box"):
            assert torch.equal(a[i][key], later[i][key])
    # Other seed / other epoch -> other pairs.
    c = TrackingPairDataset([seq], samples_per_epoch=8, seed=6, **SIZE)
    assert any(not torch.equal(a[i]["search_box"], c[i]["search_box"]) for i in range(8))
    a.set_epoch(1)
    assert any(not torch.equal(a[i]["search_box"], b[i]["search_box"]) for i in range(8))
    a.set_epoch(0)
    assert torch.equal(a[2]["search"], b[2]["search"])


def test_dataloader_workers_reproduce_single_process(tmp_path):
    seq = _square_sequence(tmp_path, n=6)
    ds = TrackingPairDataset([seq], samples_per_epoch=8, seed=1, **SIZE)
    single = next(iter(torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate)))
    multi = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    parts = list(multi)
    assert single["search"].shape == (8, 6, 64, 64)
    assert torch.equal(torch.cat([p["search"] for p in parts]), single["search"])
    assert torch.equal(torch.cat([p["search_box"] for p in parts]), single["search_box"])


def test_training_crops_equal_tracker_crops(tmp_path):
    """The sampler and the Tracker share one crop function: same template pixels for the same frame and box."""
    from srft_peft.tracking import OSTrackRGBX, Tracker, TrackerConfig

    seq = _square_sequence(tmp_path, n=6)
    ds = TrackingPairDataset([seq], samples_per_epoch=4, seed=0, **SIZE)
    tracker = Tracker(OSTrackRGBX(TrackerConfig(variant="tiny", mode="dual_stream", **SIZE)))
    for index in range(4):
        _, t, _ = ds.sample_frames(index)
        tracker.initialize(seq.load_frame(t), seq.gt[t])
        assert torch.equal(tracker.template[0], ds[index]["template"])


def _stacked_crop(image: np.ndarray, window, size: int, pad: str = "zeros") -> torch.Tensor:
    """The crop before the per-modality data path: one (H, W, 6) frame, the float64 grid cast once to float32."""
    import math

    import torch.nn.functional as F

    x0, y0, side = window
    height, width, channels = image.shape
    fill = torch.from_numpy(image.reshape(-1, channels).mean(0, dtype=np.float64)).float().view(-1, 1, 1)
    ix0, iy0 = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
    ix1, iy1 = min(math.ceil(x0 + side) + 1, width), min(math.ceil(y0 + side) + 1, height)
    sub = torch.from_numpy(np.array(image[iy0:iy1, ix0:ix1], copy=True)).permute(2, 0, 1)[None].float()
    sub = sub - fill if pad == "mean" else sub
    pos = (torch.arange(size, dtype=torch.float64) + 0.5) * (side / size)
    gx = ((x0 - ix0) + pos) * (2.0 / (ix1 - ix0)) - 1.0
    gy = ((y0 - iy0) + pos) * (2.0 / (iy1 - iy0)) - 1.0
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None].float()
    out = F.grid_sample(sub, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out + fill if pad == "mean" else out


@pytest.mark.parametrize("x_size", [(160, 120), (80, 60)])  # same size as RGB, and an X frame resized to it
def test_per_modality_crops_equal_the_stacked_frame_crops(tmp_path, x_size):
    """Items crop RGB and X separately with one window (no 6-channel full frame): the same float32 values, bit for bit,
    as the previous path that stacked the frames first; grid_sample treats channels independently and the sampling
    positions are the same float32 numbers, so no tolerance is needed. JPEG frames: the fast decoder path."""
    rng = np.random.default_rng(4)
    frames_rgb, frames_x, gt = [], [], []
    for i in range(6):
        smooth = np.asarray(Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((160, 120)))
        frames_rgb.append(tmp_path / f"v{i}.jpg")
        Image.fromarray(smooth).save(frames_rgb[-1], quality=90)
        frames_x.append(tmp_path / f"i{i}.jpg")
        Image.fromarray(255 - smooth).resize(x_size).save(frames_x[-1], quality=90)
        gt.append([20 + 9 * i, 30 + 3 * i, 30, 24])
    seq = Sequence("jpeg", frames_rgb, frames_x, np.asarray(gt, float))
    ds = TrackingPairDataset([seq], samples_per_epoch=6, seed=2, **SIZE)
    cfg = ds.config
    mean = torch.tensor(IMAGENET_MEAN * 2).view(6, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD * 2).view(6, 1, 1) * 255
    for index in range(6):
        item, rng_i = ds[index], ds.rng(index)
        _, t, s = ds._sample_frames(rng_i)
        t_win = crop_window(seq.gt[t], cfg.template_factor, exact=True)
        s_win = crop_window(ds.jitter_box(seq.gt[s], rng_i), cfg.search_factor, exact=True)
        template = (_stacked_crop(seq.load_frame(t), t_win, 32) - mean) / std
        search = (_stacked_crop(seq.load_frame(s), s_win, 64) - mean) / std
        assert torch.equal(item["template"], template) and torch.equal(item["search"], search)
        for pad in ("zeros", "mean"):
            assert torch.equal(crop_and_resize(seq.load_images(s), s_win, 64, pad=pad),
                               _stacked_crop(seq.load_frame(s), s_win, 64, pad=pad))


def test_undecodable_frame_is_an_error_naming_the_file(tmp_path):
    from srft_peft.tracking.datasets import _read_rgb

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        _read_rgb(bad)
    with pytest.raises(FileNotFoundError, match="absent.jpg"):
        _read_rgb(tmp_path / "absent.jpg")
