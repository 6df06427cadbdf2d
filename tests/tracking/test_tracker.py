"""Crop geometry (hand-computed), normalisation, Hann window and the one-pass Tracker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from tolerances import float32_rtol

from srft_peft.tracking import (
    OSTrackRGBX,
    Tracker,
    TrackerConfig,
    TrackerOutput,
    box_to_crop,
    clip_box,
    crop_window,
    hann2d,
    map_box_back,
    normalize_image,
    sample_target,
)


# --- crops ------------------------------------------------------------------------------------------------------------
def test_sample_target_at_border_pads_with_zeros():
    img = np.full((100, 100, 3), 200, np.uint8)
    # box (0, 0, 10, 10), factor 2: side 20, top-left floor(5 - 10 + 0.5) = -5 -> 5 padded rows/columns
    assert crop_window((0, 0, 10, 10), 2.0) == (-5, -5, 20)
    crop, r = sample_target(img, (0, 0, 10, 10), 2.0, 20)
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8 and r == 1.0
    assert crop[:5].max() == 0 and crop[:, :5].max() == 0 and crop[5:, 5:].min() == 200
    up, r2 = sample_target(img, (0, 0, 10, 10), 2.0, 40)  # x2 upsampling: the border moves to 10 px
    assert r2 == 2.0 and up[:9].max() == 0 and up[:, :9].max() == 0 and up[12:, 12:].min() == 200


def test_sample_target_mean_padding_six_channels_and_outside():
    img = np.zeros((50, 60, 6), np.uint8)
    img[..., :] = np.array([10, 20, 30, 40, 50, 60], np.uint8)
    crop, _ = sample_target(img, (0, 0, 10, 10), 2.0, 16, pad="mean")
    assert crop.shape == (16, 16, 6) and (crop == img[0, 0]).all()
    away, _ = sample_target(img, (500, 500, 10, 10), 2.0, 16)  # entirely outside the image: all padding
    assert away.max() == 0
    with pytest.raises(ValueError, match="pad"):
        sample_target(img, (0, 0, 10, 10), 2.0, 16, pad="edge")
    with pytest.raises(ValueError, match="width and height"):
        sample_target(img, (0, 0, 0, 10), 2.0, 16)
    with pytest.raises(ValueError, match="uint8"):
        sample_target(img.astype(np.float32), (0, 0, 10, 10), 2.0, 16)


def test_crop_mapping_hand_numbers_and_exact_inverse():
    ref = (50, 40, 20, 10)
    # side = ceil(sqrt(200)·2) = 29; x0 = floor(50 + 10 - 14.5 + 0.5) = 46; y0 = floor(40 + 5 - 14.5 + 0.5) = 31
    assert crop_window(ref, 2.0) == (46, 31, 29)
    # output 58 -> resize factor 2: crop box (10, 20, 6, 8) is image box (46 + 5, 31 + 10, 3, 4)
    back = map_box_back((10, 20, 6, 8), ref, 2.0, 58)
    np.testing.assert_array_equal(back, [51.0, 41.0, 3.0, 4.0])
    np.testing.assert_array_equal(box_to_crop((51, 41, 3, 4), ref, 2.0, 58), [10.0, 20.0, 6.0, 8.0])
    np.testing.assert_allclose(box_to_crop((51, 41, 3, 4), ref, 2.0, 58, normalize=True), np.array([10, 20, 6, 8]) / 58)
    rng = np.random.default_rng(0)
    for _ in range(20):
        box = rng.uniform(0, 100, 4)
        np.testing.assert_allclose(map_box_back(box_to_crop(box, ref, 4.0, 256), ref, 4.0, 256), box, atol=1e-9)


def test_crop_content_matches_box_mapping():
    img = np.zeros((80, 90, 3), np.uint8)
    img[41, 51] = 255  # a marker pixel at x=51, y=41
    crop, r = sample_target(img, (50, 40, 20, 10), 2.0, 29)  # no resampling (side 29)
    assert r == 1.0
    ys, xs = np.nonzero(crop[..., 0])
    mx, my, _, _ = box_to_crop((51, 41, 1, 1), (50, 40, 20, 10), 2.0, 29)
    assert (ys.tolist(), xs.tolist()) == ([int(my)], [int(mx)]) == ([10], [5])


def test_clip_box_hand_cases():
    np.testing.assert_array_equal(clip_box((-5, 100, 30, 50), 120, 160, margin=10), [0, 100, 25, 20])
    np.testing.assert_array_equal(clip_box((200, 10, 20, 20), 120, 160, margin=10), [150, 10, 10, 20])
    np.testing.assert_array_equal(clip_box((20, 30, 40, 50), 120, 160, margin=10), [20, 30, 40, 50])


def test_normalize_image_six_channels_and_batch():
    crop = np.full((4, 5, 6), 255, np.uint8)
    t = normalize_image(crop)
    assert t.shape == (6, 4, 5) and t.dtype == torch.float32
    assert t[0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert t[3, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-6)
    assert t[5, 0, 0].item() == pytest.approx((1 - 0.406) / 0.225, rel=1e-6)
    assert normalize_image(np.zeros((2, 4, 5, 3), np.uint8)).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="multiple of 3"):
        normalize_image(np.zeros((4, 4, 4), np.uint8))


def test_hann2d_values():
    w = hann2d(4)
    assert w.shape == (1, 1, 4, 4)
    row = [0.5 * (1 - math.cos(2 * math.pi * k / 5)) for k in range(1, 5)]
    # float32 cosines and products against float64: elementwise, a few roundings
    np.testing.assert_allclose(w[0, 0, 1].numpy(), np.array(row) * row[1], rtol=float32_rtol(1, depth=4))
    assert w.min() > 0


# --- tracker ----------------------------------------------------------------------------------------------------------
class PeakModel(nn.Module):
    """Hand-built 'model': a score peak at a fixed cell with a known size/offset, whatever the input."""

    def __init__(self, cell=(1, 3), offset=(0.5, 0.25), size=(0.25, 0.125), mode="rgb") -> None:
        super().__init__()
        self.config = TrackerConfig(variant="tiny", mode=mode, template_size=32, search_size=64)
        self.cell, self.offset, self.size = cell, offset, size
        self.calls: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, template: torch.Tensor, search: torch.Tensor) -> TrackerOutput:
        self.calls.append((tuple(template.shape), tuple(search.shape)))
        b, (r, c) = search.shape[0], self.cell
        score = torch.full((b, 1, 4, 4), 0.01)
        score[:, 0, r, c] = 1.0
        size = torch.zeros(b, 2, 4, 4)
        size[:, :, r, c] = torch.tensor(self.size)
        offset = torch.zeros(b, 2, 4, 4)
        offset[:, :, r, c] = torch.tensor(self.offset)
        return TrackerOutput(score_map=score, size_map=size, offset_map=offset)


def test_tracker_maps_prediction_back_by_hand():
    img = np.zeros((120, 160, 3), np.uint8)
    model = PeakModel()
    tracker = Tracker(model, search_factor=4.0)
    tracker.initialize(img, (40, 30, 20, 20))
    box, conf = tracker.track(img)
    # search crop: side 80, top-left (10, 0), resize factor 64/80 = 0.8.
    # peak cell (row 1, col 3), offset (0.5, 0.25): centre (3.5/4, 1.25/4)·64 = (56, 20); size (16, 8) crop pixels
    # -> crop box (48, 16, 16, 8) -> image (10 + 48/0.8, 0 + 16/0.8, 16/0.8, 8/0.8) = (70, 20, 20, 10)
    np.testing.assert_allclose(box, [70.0, 20.0, 20.0, 10.0], atol=1e-4)
    hann = [0.5 * (1 - math.cos(2 * math.pi * k / 5)) for k in (2, 4)]  # row 1 -> k=2, column 3 -> k=4
    assert conf == pytest.approx(hann[0] * hann[1], rel=float32_rtol(1, depth=4))  # float32 window times a score of 1
    assert model.calls[0] == ((1, 3, 32, 32), (1, 3, 64, 64))
    assert box.shape == (4,) and box.dtype == np.float64
    np.testing.assert_allclose(tracker.state, box)  # the next search is centred on this box

    no_window = Tracker(PeakModel(), window=False)
    no_window.initialize(img, (40, 30, 20, 20))
    assert no_window.track(img)[1] == pytest.approx(1.0)


def test_tracker_clips_to_image_with_margin():
    img = np.zeros((120, 160, 3), np.uint8)
    tracker = Tracker(PeakModel(cell=(3, 3), offset=(0.9, 0.9), size=(0.6, 0.6)))
    tracker.initialize(img, (135, 95, 20, 20))
    for _ in range(3):
        (x, y, w, h), _ = tracker.track(img)
        assert 0 <= x <= 150 and 0 <= y <= 110 and w >= 10 and h >= 10
        assert x + w <= 160 + 1e-9 and y + h <= 120 + 1e-9


def test_tracker_input_checks():
    tracker = Tracker(PeakModel(mode="dual_stream"))
    with pytest.raises(RuntimeError, match="initialize"):
        tracker.track(np.zeros((50, 50, 6), np.uint8))
    with pytest.raises(ValueError, match="6 channels"):
        tracker.initialize(np.zeros((50, 50, 3), np.uint8), (10, 10, 10, 10))
    with pytest.raises(ValueError, match="search_factor"):
        Tracker(PeakModel(), search_factor=0)


def moving_square_sequence(n: int = 8, h: int = 96, w: int = 128, side: int = 16):
    """Constant pattern: a bright checkered square (RGB) that is hot in X, moving 3 px right and 2 px down per frame."""
    pattern = np.full((side, side, 6), 230, np.uint8)
    pattern[::4, :, :3] = 60
    pattern[..., 3:] = 255
    frames, boxes = [], []
    for i in range(n):
        x, y = 20 + 3 * i, 15 + 2 * i
        f = np.full((h, w, 6), 25, np.uint8)
        f[y : y + side, x : x + side] = pattern
        frames.append(f)
        boxes.append((x, y, side, side))
    return frames, np.array(boxes, float)


@pytest.mark.parametrize("mode", ["rgb", "dual_stream", "prompt"])
def test_tiny_model_tracks_sequence_inside_image(mode):
    torch.manual_seed(0)
    rgb = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64))
    model = rgb if mode == "rgb" else OSTrackRGBX.from_rgb(rgb, mode)
    frames, gt = moving_square_sequence()
    boxes, scores = Tracker(model).run_sequence(frames, gt[0])
    assert boxes.shape == (8, 4) and scores.shape == (8,)
    np.testing.assert_array_equal(boxes[0], gt[0])
    assert np.isfinite(boxes).all()
    h, w = frames[0].shape[:2]
    x, y, bw, bh = boxes[1:].T
    assert (x >= 0).all() and (y >= 0).all() and (x + bw <= w + 1e-9).all() and (y + bh <= h + 1e-9).all()
    assert (bw >= 10).all() and (bh >= 10).all()
    assert ((scores[1:] > 0) & (scores[1:] < 1)).all()
    assert not model.training


@pytest.mark.slow
def test_briefly_trained_tiny_model_follows_the_square():
    """End to end: crops + box_to_crop targets (the data contract) -> loss -> Tracker decoding back to the image."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64)).train()
    frames, gt = moving_square_sequence(n=20)
    frames = [f[..., :3] for f in frames]
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    for _ in range(60):
        zs, xs, targets = [], [], []
        for _ in range(16):
            i, j = rng.integers(0, len(frames), 2)
            box = gt[j]
            side = np.sqrt(box[2] * box[3])
            centre = box[:2] + box[2:] / 2 + rng.uniform(-0.75, 0.75, 2) * side  # jittered search centre
            size = box[2:] * np.exp(rng.uniform(-0.25, 0.25, 2))
            ref = np.r_[centre - size / 2, size]
            zs.append(normalize_image(sample_target(frames[i], gt[i], 2.0, 32)[0]))
            xs.append(normalize_image(sample_target(frames[j], ref, 4.0, 64)[0]))
            targets.append(box_to_crop(box, ref, 4.0, 64, normalize=True))
        out = model(torch.stack(zs), torch.stack(xs), search_box=torch.tensor(np.array(targets), dtype=torch.float32))
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    boxes, _ = Tracker(model).run_sequence(frames, gt[0])
    err = np.linalg.norm(boxes[:, :2] + boxes[:, 2:] / 2 - (gt[:, :2] + gt[:, 2:] / 2), axis=1)
    assert err[1:].mean() < 8, err
