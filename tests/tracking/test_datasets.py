"""Loaders: every on-disk convention of REFERENCE.md §B on tiny hand-made sequences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srft_peft.tracking.datasets import (
    Sequence,
    depth_to_colormap,
    load_coesot,
    load_dataset,
    load_depthtrack,
    load_fe108,
    load_gtot,
    load_lasher,
    load_rgb_only,
    load_rgbt210,
    load_rgbt234,
    load_visevent,
    read_boxes,
)


def _img(path: Path, value: int = 100, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(arr).convert(mode).save(path)


def _text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())


def _lasher_seq(root: Path, name: str, lines: list[str], eol: str = "\r\n") -> Path:
    d = root / name
    for i in range(len(lines)):
        _img(d / "visible" / f"v{i:06d}.jpg", 50)
        _img(d / "infrared" / f"i{i:06d}.jpg", 200, mode="L")
    text = "".join(line + eol for line in lines)
    for gt_name in ("visible.txt", "infrared.txt", "init.txt"):
        _text(d / gt_name, text)
    return d


# ---------------------------------------------------------------------------------------------------------------------
# Annotation parsing
# ---------------------------------------------------------------------------------------------------------------------
def test_read_boxes_separators_crlf_and_absent(tmp_path):
    path = tmp_path / "gt.txt"
    _text(path, "\ufeff1,2,3,4\r\n5 6 7 8\r\n9\t10\t11\t12\r\n0,0,0,0\r\n3,4,0,0\r\nnan,nan,nan,nan\r\n\r\n")
    boxes = read_boxes(path)
    assert boxes.shape == (6, 4) and boxes.dtype == np.float64
    assert boxes[:3].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert np.isnan(boxes[3:]).all()  # 0,0,0,0 / x,y,0,0 / nan rows -> absent
    raw = read_boxes(path, absent_to_nan=False)
    assert raw[4].tolist() == [3, 4, 0, 0]


def test_read_boxes_old_mac_cr_line_endings(tmp_path):
    path = tmp_path / "gt.txt"
    _text(path, "1,2,3,4\r5,6,7,8\r")
    assert read_boxes(path).tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "groundtruth.txt"
    _text(path, "1,2,3,4\n1,2,3\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt, line 2: expected 4 numbers"):
        read_boxes(path)
    _text(path, "1,2,3,4\r\n1,2,3,4\r\nfoo,2,3,4\r\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt, line 3: .*'foo,2,3,4'"):
        read_boxes(path)
    _text(path, "1,2,3,4\n\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"groundtruth\.txt, line 2: empty line"):
        read_boxes(path)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_boxes(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------------------
# RGB-T layouts
# ---------------------------------------------------------------------------------------------------------------------
def test_lasher_crlf_comma_and_absent_boxes(tmp_path):
    _lasher_seq(tmp_path, "seqB", ["1,2,3,4", "0,0,0,0", "5,6,0,0"])
    _lasher_seq(tmp_path, "seqA", ["1,1,2,2", "1,1,2,2"])
    seqs = load_lasher(tmp_path)
    assert [s.name for s in seqs] == ["seqA", "seqB"]
    seq = seqs[1]
    assert seq.modality == "rgbt" and seq.dataset == "lasher" and len(seq) == 3
    assert seq.gt[0].tolist() == [1, 2, 3, 4]
    assert np.isnan(seq.gt[1:]).all()
    assert seq.visible.tolist() == [True, False, False]
    assert seq.gt_x is not None and seq.gt_x[0].tolist() == [1, 2, 3, 4]
    frame = seq.load_frame(0)
    assert frame.shape == (6, 8, 6) and frame.dtype == np.uint8
    assert abs(int(frame[..., 0].mean()) - 50) <= 2 and abs(int(frame[..., 3:].mean()) - 200) <= 2
    assert seq.load_frame(0, rgb_only=True).shape == (6, 8, 3)
    # split file restricts and orders sequences
    _text(tmp_path / "split.txt", "seqB\r\n")
    assert [s.name for s in load_lasher(tmp_path, split_file=tmp_path / "split.txt")] == ["seqB"]
    _text(tmp_path / "split.txt", "seqB\nnope\n")
    with pytest.raises(FileNotFoundError, match=r"split\.txt, line 2"):
        load_lasher(tmp_path, split_file=tmp_path / "split.txt")


def test_frame_and_gt_count_mismatch(tmp_path):
    d = _lasher_seq(tmp_path, "seq", ["1,2,3,4", "1,2,3,4"])
    (d / "infrared" / "i000001.jpg").unlink()
    with pytest.raises(ValueError, match=r"visible\.txt: 2 annotation lines but 1 frames"):
        load_lasher(tmp_path)


def test_rgbt234_two_ground_truths_and_rgbt210(tmp_path):
    d = _lasher_seq(tmp_path, "car", ["10,10,5,5", "11,11,5,5"])
    _text(d / "infrared.txt", "12,10,5,5\n13,11,5,5\n")
    seq = load_rgbt234(tmp_path)[0]
    assert seq.dataset == "rgbt234"
    assert seq.gt[1].tolist() == [11, 11, 5, 5] and seq.gt_x[1].tolist() == [13, 11, 5, 5]
    seq = load_rgbt210(tmp_path)[0]
    assert seq.gt_x is None and seq.gt[0].tolist() == [10, 10, 5, 5]


def test_gtot_corner_format_and_tab_separated_init(tmp_path):
    d = tmp_path / "BlackCar"
    for i in range(2):
        _img(d / "v" / f"{i:05d}v.png", 10)
        _img(d / "i" / f"{i:05d}i.png", 240)
    _text(d / "groundTruth_v.txt", "10 20 30 60\n12 22 32 62\n")  # x1 y1 x2 y2
    _text(d / "groundTruth_i.txt", "11 20 31 60\n13 22 33 62\n")
    _text(d / "init.txt", "10\t20\t20\t40\n")
    seq = load_gtot(tmp_path)[0]
    assert seq.gt.tolist() == [[10, 20, 20, 40], [12, 22, 20, 40]]  # w = x2 - x1, h = y2 - y1
    assert seq.gt_x[0].tolist() == [11, 20, 20, 40]
    assert seq.get_init_box().tolist() == [10, 20, 20, 40]
    assert seq.load_frame(1).shape == (6, 8, 6)


# ---------------------------------------------------------------------------------------------------------------------
# RGB-D
# ---------------------------------------------------------------------------------------------------------------------
def _depthtrack_seq(root: Path, name: str, gt: str, n: int) -> Path:
    d = root / name
    (d / "depth").mkdir(parents=True)
    for i in range(1, n + 1):
        _img(d / "color" / f"{i:08d}.jpg", 90)
        Image.fromarray(np.array([[1000, 2000], [3000, 4000]], np.uint16)).save(d / "depth" / f"{i:08d}.png")
    _text(d / "groundtruth.txt", gt)
    return d


def test_depthtrack_one_based_frames_and_nan_rows(tmp_path):
    _depthtrack_seq(tmp_path, "adapter01_indoor", "1,1,1,1\nnan,nan,nan,nan\n0.5,0.5,1,1\n", 3)
    seq = load_depthtrack(tmp_path)[0]
    assert seq.frames_rgb[0].name == "00000001.jpg" and seq.frames_x[2].name == "00000003.png"
    assert seq.visible.tolist() == [True, False, True] and np.isnan(seq.gt[1]).all()
    frame = seq.load_frame(0)  # the 2x2 depth map is resized to the 8x6 RGB size
    assert frame.shape == (6, 8, 6)
    # VOT workspace layout: root/sequences/<seq>
    (tmp_path / "ws").mkdir()
    _depthtrack_seq(tmp_path / "ws" / "sequences", "box", "1,1,1,1\n", 1)
    assert [s.name for s in load_dataset("vot-rgbd", tmp_path / "ws")] == ["box"]


def test_depthtrack_missing_frame_names_file_and_line(tmp_path):
    d = _depthtrack_seq(tmp_path, "seq", "1,1,1,1\n1,1,1,1\n1,1,1,1\n", 3)
    (d / "depth" / "00000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"00000002\.png.*groundtruth\.txt line 2"):
        load_depthtrack(tmp_path)


@pytest.mark.parametrize("folder", ["color", "depth"])
def test_depthtrack_frames_beyond_the_ground_truth_raise(tmp_path, folder):
    # 3 colour and depth frames, 2 annotation lines: like LasHeR / VisEvent, an error (frames were silently dropped).
    d = _depthtrack_seq(tmp_path, "seq", "1,1,1,1\n1,1,1,1\n1,1,1,1\n", 3)
    _text(d / "groundtruth.txt", "1,1,1,1\n1,1,1,1\n")
    other = "depth" if folder == "color" else "color"
    next(p for p in sorted((d / other).iterdir()) if p.name.startswith("00000003")).unlink()  # only `folder` has extra
    message = rf"groundtruth\.txt: 2 annotation lines but 3 frames in .*seq[/\\]{folder}"
    with pytest.raises(ValueError, match=message):
        load_depthtrack(tmp_path)


def test_depth_colormap_clip_normalise_jet():
    depth = np.array([[1000, 2000], [3000, 4000]], np.uint16)  # median 2500 -> clip at 7500: no clipping
    jet = depth_to_colormap(depth)
    assert jet.dtype == np.uint8 and jet.shape == (2, 2, 3)
    assert jet[0, 0].tolist() == [0, 0, 128]  # nearest: dark blue
    assert jet[1, 1].tolist() == [128, 0, 0]  # farthest: dark red
    # Far outliers are clipped at 3 x median, so they do not squash the rest of the range.
    clipped = depth_to_colormap(np.array([[1000, 1000], [2000, 60000]], np.uint16))  # median 1500 -> clip 4500
    assert clipped[1, 0].tolist() == depth_to_colormap(np.array([[1000, 1000], [2000, 4500]], np.uint16))[1, 0].tolist()
    assert depth_to_colormap(np.full((2, 2), 1500, np.uint16))[0, 0].tolist() == [0, 0, 128]  # constant -> 0


# ---------------------------------------------------------------------------------------------------------------------
# RGB-E
# ---------------------------------------------------------------------------------------------------------------------
def test_visevent_absent_label_is_inverted(tmp_path):
    d = tmp_path / "dvSave-2021_02_04"
    for i in range(3):
        _img(d / "vis_imgs" / f"frame{i:04d}.bmp", 30)
        _img(d / "event_imgs" / f"frame{i:04d}.bmp", 250)
    _text(d / "groundtruth.txt", "1,2,3,4\n1,2,3,4\n1,2,3,4\n")
    _text(d / "absent_label.txt", "1\n0\n1\n")  # 1 = present, 0 = absent
    seq = load_visevent(tmp_path)[0]
    assert seq.visible.tolist() == [True, False, True]
    assert np.isnan(seq.gt[1]).all() and seq.gt[2].tolist() == [1, 2, 3, 4]
    assert seq.modality == "rgbe" and seq.load_frame(2).shape == (6, 8, 6)
    _text(d / "absent_label.txt", "1\n2\n1\n")
    with pytest.raises(ValueError, match=r"absent_label\.txt, line 2: expected 0 or 1"):
        load_visevent(tmp_path)


def test_visevent_sequence_starting_absent_initialises_on_first_visible_frame(tmp_path):
    d = tmp_path / "s"
    for i in range(3):
        _img(d / "vis_imgs" / f"frame{i:04d}.bmp")
        _img(d / "event_imgs" / f"frame{i:04d}.bmp")
    _text(d / "groundtruth.txt", "0,0,0,0\n1,2,3,4\n1,2,3,4\n")
    _text(d / "absent_label.txt", "0\n1\n1\n")
    seq = load_visevent(tmp_path)[0]
    assert seq.init_frame == 1 and seq.get_init_box().tolist() == [1, 2, 3, 4]


def test_fe108_and_coesot(tmp_path):
    d = tmp_path / "fe" / "airplane"
    for i in range(1, 3):
        _img(d / "img" / f"{i:04d}.jpg")
        _img(d / "inter3_stack" / f"{i:04d}_1.jpg")
    _text(d / "groundtruth_rect.txt", "1,1,2,2\n1,1,2,2\n")
    seq = load_fe108(tmp_path / "fe")[0]
    assert seq.frames_rgb[0].name == "0001.jpg" and seq.modality == "rgbe"
    d = tmp_path / "co" / "dvSave-1"
    for i in range(2):
        _img(d / "dvSave-1_aps" / f"frame{i:04d}.png")
        _img(d / "dvSave-1_dvs" / f"frame{i:04d}.png")
    _text(d / "groundtruth.txt", "1,1,2,2\n0,0,0,0\n")
    seq = load_coesot(tmp_path / "co")[0]
    assert seq.frames_rgb[0].name == "frame0000.png" and seq.visible.tolist() == [True, False]


# ---------------------------------------------------------------------------------------------------------------------
# RGB only, dispatcher, Sequence validation
# ---------------------------------------------------------------------------------------------------------------------
def test_rgb_only_and_dispatcher(tmp_path):
    d = tmp_path / "Basketball"
    for i in range(1, 12):
        _img(d / "img" / f"{i}.jpg", i)  # unpadded names: natural order 1, 2, ..., 10, 11
    _text(d / "groundtruth.txt", "1,1,2,2\n" * 11)
    seq = load_dataset("RGB", tmp_path)[0]
    assert [p.name for p in seq.frames_rgb[:3]] == ["1.jpg", "2.jpg", "3.jpg"]
    assert seq.frames_rgb[-1].name == "11.jpg"
    assert seq.load_frame(0).shape == (6, 8, 3)
    with pytest.raises(ValueError, match=r"unknown dataset 'otb100'; choose one of \["):
        load_dataset("otb100", tmp_path)
    with pytest.raises(FileNotFoundError, match="no sequence folders"):
        load_lasher(tmp_path)
    assert load_rgb_only(tmp_path)[0].name == "Basketball"


def test_sequence_validation():
    with pytest.raises(ValueError, match="modality must be one of"):
        Sequence("s", ["a.jpg"], ["b.jpg"], np.zeros((1, 4)), modality="rgbx")
    with pytest.raises(ValueError, match="2 RGB frames but 1 ground-truth boxes"):
        Sequence("s", ["a.jpg", "b.jpg"], [], np.ones((1, 4)), modality="rgb")
    with pytest.raises(ValueError, match=r"gt must have shape \(N, 4\)"):
        Sequence("s", ["a.jpg"], [], np.ones((1, 5)), modality="rgb")
    seq = Sequence("s", ["a.jpg"], [], [[1, 2, 3, 4]], modality="rgb")
    with pytest.raises(FileNotFoundError, match="a.jpg"):
        seq.load_frame(0)
