"""Hand-computed checks of every metric convention (REFERENCE.md §C)."""

from __future__ import annotations

import numpy as np
import pytest

from srft_peft.tracking.datasets import Sequence
from srft_peft.tracking.metrics import (
    SUCCESS_THRESHOLDS,
    auc,
    box_center,
    box_iou,
    center_error,
    evaluate_results,
    long_term_precision_recall,
    long_term_thresholds,
    normalized_precision_curve,
    precision_curve,
    prepare_predictions,
    success_curve,
)

NAN4 = [np.nan] * 4


def _seq(name, gt, gt_x=None, dataset=""):
    gt = np.asarray(gt, float)
    return Sequence(name, [f"{i}.jpg" for i in range(len(gt))], [], gt, gt_x=gt_x, modality="rgb", dataset=dataset)


# ---------------------------------------------------------------------------------------------------------------------
# Per-frame conventions
# ---------------------------------------------------------------------------------------------------------------------
def test_center_uses_w_minus_1_over_2():
    # x + (w - 1) / 2 = 10 + 2 = 12, y + (h - 1) / 2 = 20 + 1.5 = 21.5 (not 12.5 / 22 as with w / 2)
    assert box_center([10, 20, 5, 4]).tolist() == [[12.0, 21.5]]


def test_iou_on_inclusive_pixels_by_hand():
    # a covers columns/rows 0..9, b covers 5..14: overlap 5 x 5 = 25 pixels, union 100 + 100 - 25 = 175.
    assert box_iou([0, 0, 10, 10], [5, 5, 10, 10])[0] == pytest.approx(25 / 175)
    # b covers columns 9..18: one shared column of 10 pixels -> 10 / 190 (x2 = x + w - 1, overlap + 1).
    assert box_iou([0, 0, 10, 10], [9, 0, 10, 10])[0] == pytest.approx(10 / 190)
    # Touching boxes (a ends at column 9, b starts at 10) share nothing.
    assert box_iou([0, 0, 10, 10], [10, 0, 10, 10])[0] == 0.0
    # A 1x1 box inside a 3x3 box: 1 / 9.
    assert box_iou([2, 2, 1, 1], [1, 1, 3, 3])[0] == pytest.approx(1 / 9)
    # Missing / empty boxes have no overlap.
    assert box_iou(NAN4, [0, 0, 4, 4])[0] == 0.0
    assert box_iou([0, 0, 0, 4], [0, 0, 4, 4])[0] == 0.0


def test_zero_size_prediction_takes_previous_box():
    gt = np.array([[0, 0, 10, 10]] * 4, float)
    pred = np.array([[50, 50, 10, 10], [20, 20, 10, 10], [30, 30, 0, 5], [40, 40, 5, -1]], float)
    fixed = prepare_predictions(pred, gt)
    assert fixed[0].tolist() == [0, 0, 10, 10]  # frame 0 := ground truth
    assert fixed[2].tolist() == [20, 20, 10, 10]  # w = 0 -> previous box
    assert fixed[3].tolist() == [20, 20, 10, 10]  # h < 0 -> previous (already fixed) box
    # A NaN prediction is invalid too.
    fixed = prepare_predictions(np.array([[0, 0, 10, 10], [1, 1, 10, 10], NAN4]), gt[:3])
    assert fixed[2].tolist() == [1, 1, 10, 10]
    # Results are truncated to the ground-truth length; shorter results are an error.
    assert prepare_predictions(np.zeros((6, 4)) + 1, gt).shape == (4, 4)
    with pytest.raises(ValueError, match="3 boxes but the ground truth has 4"):
        prepare_predictions(np.ones((3, 4)), gt)


# ---------------------------------------------------------------------------------------------------------------------
# 3-frame toy sequence, by hand
# ---------------------------------------------------------------------------------------------------------------------
GT3 = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 10, 10]], float)
PRED3 = np.array([[100, 100, 5, 5], [14, 13, 20, 20], [0, 0, 5, 10]], float)
# frame 0: replaced by GT -> distance 0, IoU 1, normalised distance 0
# frame 1: centre offset (4, 3) -> distance 5; normalised (4/20, 3/20) -> 0.25;
#          overlap (29 - 14 + 1) x (29 - 13 + 1) = 16 x 17 = 272, IoU 272 / 528
# frame 2: centres (2, 4.5) vs (4.5, 4.5) -> distance 2.5; normalised 0.25; IoU 50 / 100 = 0.5


def test_precision_on_toy_sequence():
    assert center_error(prepare_predictions(PRED3, GT3), GT3).tolist() == [0.0, 5.0, 2.5]
    assert precision_curve(PRED3, GT3, [0, 2.5, 3, 4.9, 5, 20]).tolist() == pytest.approx(
        [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1]
    )


def test_normalized_precision_on_toy_sequence():
    assert normalized_precision_curve(PRED3, GT3, [0.1, 0.2, 0.3]).tolist() == pytest.approx([1 / 3, 1 / 3, 1])


def test_success_on_toy_sequence():
    curve = success_curve(PRED3, GT3)
    # IoU 1 > tau for 20 of the 21 thresholds (not 1.0); 272/528 = 0.515 for 11 (0..0.5); 0.5 for 10 (0..0.45).
    expected = (
        np.array([1.0 > t for t in SUCCESS_THRESHOLDS], float)
        + (SUCCESS_THRESHOLDS < 272 / 528)
        + (SUCCESS_THRESHOLDS < 0.5)
    ) / 3
    assert curve.tolist() == pytest.approx(expected.tolist())
    assert auc(curve) == pytest.approx((20 + 11 + 10) / 63)
    # The GTOT toolkit integrates with the trapezoid rule instead.
    assert auc([1.0, 0.5, 0.0], rule="trapezoid") == pytest.approx(0.5)


def test_evaluate_results_default_protocol_on_toy_sequence():
    summary = evaluate_results([_seq("toy", GT3)], {"toy": PRED3}, protocol="default")
    assert summary["PR"] == pytest.approx(1.0)  # all distances <= 20
    assert summary["NPR"] == pytest.approx(1 / 3)  # only frame 0 within 0.2
    assert summary["SR"] == pytest.approx(41 / 63)
    assert summary["per_sequence"]["toy"]["SR"] == pytest.approx(41 / 63)


# ---------------------------------------------------------------------------------------------------------------------
# Absent frames
# ---------------------------------------------------------------------------------------------------------------------
def test_lasher_absent_rule_changes_numbers_as_expected():
    gt = np.array([[5, 5, 10, 10], [10, 10, 20, 20], NAN4], float)
    pred = np.array([[5, 5, 10, 10], [14, 13, 20, 20], [90, 90, 10, 10]], float)  # frame 2 is far away
    # LasHeR: the absent frame is a hit for PR and a miss for SR, and stays in the denominator.
    assert precision_curve(pred, gt, [20], absent="lasher")[0] == pytest.approx(1.0)
    assert auc(success_curve(pred, gt, absent="lasher")) == pytest.approx((20 + 11) / 63)
    # Excluding it: 2 frames, both hits for PR.
    assert precision_curve(pred, gt, [20], absent="exclude")[0] == pytest.approx(1.0)
    assert auc(success_curve(pred, gt, absent="exclude")) == pytest.approx((20 + 11) / 42)
    # Counting it as a miss (pytracking default).
    assert precision_curve(pred, gt, [20], absent="miss")[0] == pytest.approx(2 / 3)
    assert auc(success_curve(pred, gt, absent="miss")) == pytest.approx((20 + 11) / 63)
    # NPR follows PR.
    assert normalized_precision_curve(pred, gt, [0.1], absent="lasher")[0] == pytest.approx(2 / 3)


def test_lasher_rule_treats_any_non_positive_coordinate_as_absent():
    # The LasHeR toolkit tests "any coordinate <= 0": a box touching the left border counts as absent.
    gt = np.array([[5, 5, 10, 10], [0, 3, 10, 10]], float)
    pred = np.array([[5, 5, 10, 10], [60, 60, 10, 10]], float)
    assert precision_curve(pred, gt, [20], absent="lasher")[0] == pytest.approx(1.0)
    assert precision_curve(pred, gt, [20], absent="exclude")[0] == pytest.approx(0.5)


def test_lasher_protocol_truncates_results_and_averages_sequences():
    a = _seq("a", [[5, 5, 10, 10], [5, 5, 10, 10]], dataset="lasher")
    b = _seq("b", [[5, 5, 10, 10], [5, 5, 10, 10], [0, 0, 0, 0], [5, 5, 10, 10]], dataset="lasher")
    far = [80, 80, 10, 10]
    results = {
        "a": np.array([[5, 5, 10, 10], [5, 5, 10, 10], far, far]),  # extra frames are cut off
        "b": np.array([[5, 5, 10, 10], far, far, far]),
    }
    summary = evaluate_results([a, b], results)  # protocol picked from Sequence.dataset
    assert summary["protocol"] == "lasher"
    # a: PR 1; b: frames 0 (hit), 1 (miss), 2 (absent -> hit), 3 (miss) -> 0.5; mean 0.75
    assert summary["PR"] == pytest.approx(0.75)
    # a: SR 20/21; b: only frame 0 succeeds -> (20/21) / 4; mean
    assert summary["SR"] == pytest.approx((20 / 21 + 20 / 84) / 2)


# ---------------------------------------------------------------------------------------------------------------------
# Two ground truths (RGBT234 MPR/MSR) and GTOT pooling
# ---------------------------------------------------------------------------------------------------------------------
def test_mpr_msr_take_min_distance_and_max_overlap():
    gt_v = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    gt_i = np.array([[0, 0, 10, 10], [8, 0, 10, 10]], float)
    pred = np.array([[0, 0, 10, 10], [10, 0, 10, 10]], float)
    # frame 1: distance 10 to the visible GT, 2 to the infrared GT -> min 2
    assert precision_curve(pred, gt_v, [5], gt_x=gt_i)[0] == pytest.approx(1.0)
    assert precision_curve(pred, gt_v, [5])[0] == pytest.approx(0.5)
    # frame 1: IoU 0 with the visible GT, 80 / 120 with the infrared GT -> max 2/3
    curve = success_curve(pred, gt_v, [0.5, 0.7], gt_x=gt_i)
    assert curve.tolist() == pytest.approx([1.0, 0.5])
    seq = _seq("s", gt_v, gt_x=gt_i, dataset="rgbt234")
    summary = evaluate_results([seq], {"s": pred})
    assert summary["protocol"] == "rgbt234"
    assert summary["MPR"] == pytest.approx(1.0)
    assert summary["PR"] == pytest.approx(1.0)  # distance 10 <= 20 on the visible GT alone
    assert summary["MSR"] == pytest.approx((20 + 14) / 42)  # 2/3 > tau for tau in 0..0.65 (14 values)


def test_gtot_protocol_pools_frames_and_uses_5_px():
    a = _seq("a", [[0, 0, 10, 10]] * 2)
    b = _seq("b", [[0, 0, 10, 10]] * 4)
    results = {"a": np.array([[0, 0, 10, 10], [3, 0, 10, 10]]), "b": np.array([[0, 0, 10, 10]] + [[6, 0, 10, 10]] * 3)}
    summary = evaluate_results([a, b], results, protocol="gtot")
    # hits at 5 px: a 2/2, b 1/4 -> pooled 3/6 (sequence mean would be 0.625)
    assert summary["MPR"] == pytest.approx(0.5)
    assert summary["PR"] == pytest.approx(0.5)
    default = evaluate_results([a, b], results, protocol="default")
    assert default["PR"] == pytest.approx(1.0)  # 20 px


# ---------------------------------------------------------------------------------------------------------------------
# Long-term precision / recall / F (DepthTrack)
# ---------------------------------------------------------------------------------------------------------------------
def test_long_term_f_score_by_hand():
    gt_a = np.array([[0, 0, 10, 10]] * 4 + [NAN4], float)  # target present in frames 0-3 (4 frames)
    pred_a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 5, 10], [50, 50, 10, 10], [0, 0, 10, 10]], float)
    conf_a = np.array([1.0, 0.9, 0.8, 0.3, 0.2])  # overlaps of frames 1..4: 1, 0.5, 0, 0 (absent)
    one = long_term_precision_recall([pred_a], [conf_a], [gt_a])
    # thresholds inf, .9, .8, .3, .2, -inf -> (P, R) = (1, 0), (1, .25), (.75, .375), (.5, .375), (.375, .375) x2
    assert one["thresholds"].tolist() == [np.inf, 0.9, 0.8, 0.3, 0.2, -np.inf]
    assert one["precision_curve"].tolist() == pytest.approx([1, 1, 0.75, 0.5, 0.375, 0.375])
    assert one["recall_curve"].tolist() == pytest.approx([0, 0.25, 0.375, 0.375, 0.375, 0.375])
    assert one["F"] == pytest.approx(0.5)  # 2 * .75 * .375 / 1.125
    assert (one["precision"], one["recall"], one["threshold"]) == pytest.approx((0.75, 0.375, 0.8))

    # A second sequence: thresholds are shared (from all confidences) and the curves averaged over sequences.
    gt_b = np.array([[0, 0, 10, 10]] * 3, float)
    conf_b = np.array([1.0, 0.5, 0.1])
    two = long_term_precision_recall([pred_a, gt_b.copy()], [conf_a, conf_b], [gt_a, gt_b])
    assert two["thresholds"].tolist() == [np.inf, 0.9, 0.8, 0.5, 0.3, 0.2, 0.1, -np.inf]
    p, r = (0.375 + 1.0) / 2, (0.375 + 2 / 3) / 2  # best at tau = 0.1
    assert two["F"] == pytest.approx(2 * p * r / (p + r))
    assert (two["precision"], two["recall"], two["threshold"]) == pytest.approx((p, r, 0.1))

    # The same numbers through the depthtrack protocol.
    seqs = [_seq("a", gt_a, dataset="depthtrack"), _seq("b", gt_b, dataset="depthtrack")]
    summary = evaluate_results(seqs, {"a": (pred_a, conf_a, 30.0), "b": (gt_b, conf_b, 10.0)})
    assert summary["F"] == pytest.approx(two["F"])
    assert summary["fps"] == pytest.approx(20.0)


def test_long_term_thresholds_are_quantiles():
    thr = long_term_thresholds(np.linspace(0, 1, 500), resolution=100)
    assert thr.shape == (100,)
    assert thr[0] == np.inf and thr[-1] == -np.inf
    assert np.all(np.diff(thr[1:-1]) < 0)  # decreasing
    assert long_term_thresholds([0.2, np.nan, 0.7]).tolist() == [np.inf, 0.7, 0.2, -np.inf]


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown protocol 'otb'"):
        evaluate_results([_seq("a", GT3)], {"a": PRED3}, protocol="otb")
    with pytest.raises(KeyError, match="no results"):
        evaluate_results([_seq("a", GT3)], {})
    with pytest.raises(ValueError, match="absent rule"):
        precision_curve(PRED3, GT3, absent="ignore")
    with pytest.raises(ValueError, match="needs confidences"):
        evaluate_results([_seq("a", GT3)], {"a": PRED3}, protocol="depthtrack")


# ---------------------------------------------------------------------------------------------------------------------
# Per-benchmark conventions (Protocol fields), each against the LasHeR behaviour it must not change
# ---------------------------------------------------------------------------------------------------------------------
def test_rgbt234_and_gtot_score_the_submitted_frame_0_box():
    gt = np.array([[5, 5, 10, 10]] * 2, float)  # x, y > 0: present under LasHeR's rule too
    pred = np.array([[35, 5, 10, 10], [5, 5, 10, 10]], float)  # frame 0 is 30 px off, IoU 0; frame 1 exact
    for name in ("rgbt234", "gtot"):
        summary = evaluate_results([_seq("s", gt, dataset=name)], {"s": pred})
        assert summary["PR"] == pytest.approx(0.5) and summary["MPR"] == pytest.approx(0.5)
    assert evaluate_results([_seq("s", gt, dataset="rgbt234")], {"s": pred})["MSR"] == pytest.approx(20 / 42)
    # LasHeR's toolkit replaces frame 0 by the ground truth: unchanged.
    lasher = evaluate_results([_seq("s", gt, dataset="lasher")], {"s": pred})
    assert (lasher["PR"], lasher["SR"]) == pytest.approx((1.0, 20 / 21))


def test_rgbt234_and_gtot_score_empty_boxes_as_written():
    gt = np.array([[5, 5, 10, 10]] * 3, float)
    pred = np.array([[5, 5, 10, 10], [5, 5, 10, 10], [5, 5, 0, 10]], float)  # frame 2: w = 0
    summary = evaluate_results([_seq("s", gt, dataset="rgbt234")], {"s": pred})
    assert summary["MSR"] == pytest.approx(40 / 63)  # frame 2 has IoU 0 (not the previous box's 1)
    # Its centre (4.5, 9.5) is 5 px from the GT centre (9.5, 9.5): a hit at 20 px, as the toolkit computes it.
    assert summary["MPR"] == pytest.approx(1.0)
    lasher = evaluate_results([_seq("s", gt, dataset="lasher")], {"s": pred})
    assert lasher["SR"] == pytest.approx(60 / 63)  # LasHeR: the previous box is substituted


def test_gtot_precision_is_strictly_below_5_px():
    gt = np.array([[0, 0, 10, 10]] * 2, float)
    pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10]], float)  # frame 1 exactly 5 px off
    summary = evaluate_results([_seq("s", gt, dataset="gtot")], {"s": pred})
    assert summary["PR"] == pytest.approx(0.5) and summary["MPR"] == pytest.approx(0.5)
    assert precision_curve(pred, gt, [5.0], strict=True)[0] == pytest.approx(0.5)
    assert precision_curve(pred, gt, [5.0])[0] == pytest.approx(1.0)  # other benchmarks: <= θ


def test_gtot_success_pools_frames_with_the_trapezoid_rule():
    a = _seq("a", [[0, 0, 10, 10]] * 2, dataset="gtot")
    b = _seq("b", [[0, 0, 10, 10]] * 4, dataset="gtot")
    results = {"a": np.array([[0, 0, 10, 10], [5, 0, 10, 10]], float), "b": np.array([[0, 0, 10, 10]] * 4, float)}
    summary = evaluate_results([a, b], results)
    # IoUs over the 6 pooled frames: 1 x 5 and 50 / 150 = 1/3. S(τ) = 1 for τ <= 0.3 (7 thresholds), 5/6 for
    # 0.35..0.95 (13), 0 at 1. Trapezoid over the 21 thresholds: (6 + 11/12 + 12 * 5/6 + 5/12) / 20 = 13/15.
    expected = np.array([1.0] * 7 + [5 / 6] * 13 + [0.0])
    assert summary["success_curve"].tolist() == pytest.approx(expected.tolist())
    assert summary["MSR"] == pytest.approx(13 / 15) and summary["SR"] == pytest.approx(13 / 15)
