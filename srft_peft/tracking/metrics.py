"""One-pass-evaluation tracking metrics with the conventions of the official toolkits.

Conventions shared by all benchmarks (the public LasHeR / RGBT234 / GTOT toolkits and the VOT toolkit):

* boxes are ``x, y, w, h`` (top-left, 0-based pixels); centre ``c = (x + (w - 1) / 2, y + (h - 1) / 2)``;
* IoU on inclusive pixels: ``x2 = x + w - 1`` and the overlap width is ``min(x2) - max(x1) + 1``;
* predictions are truncated to the ground-truth length;
* ``PR(θ)`` = fraction of frames with centre distance ``<= θ`` (20 px); ``NPR(θ)`` likewise with the offset divided
  by the GT width/height (θ = 0.2); success ``S(τ)`` = fraction with IoU ``> τ`` for ``τ ∈ {0, 0.05, ..., 1}`` and
  ``SR`` = its mean (the AUC);
* curves are computed per sequence, then averaged over sequences.

What differs per benchmark is a field of its :class:`Protocol` (see ``PROTOCOLS``): whether frame 0 is replaced by
the ground truth (LasHeR: yes; RGBT234 / GTOT score the submitted box), whether a prediction with ``w <= 0``,
``h <= 0`` or NaN takes the previous box (LasHeR) or is scored as written (IoU 0), the absent-frame rule, GTOT's 5 px
threshold with a strict ``< θ``, frame pooling and trapezoid AUC.

All returned values are fractions in [0, 1].

Example:
    >>> gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], float)
    >>> pred = np.array([[0, 0, 10, 10], [5, 0, 10, 10]], float)
    >>> round(float(success_curve(pred, gt).mean()), 4)  # IoUs 1 and 1/3 -> (20 + 7) / 42
    0.6429
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from typing import Any

import numpy as np

from .datasets import get_dataset
from .protocols import ABSENT_RULES, PROTOCOLS, Protocol, check_absent_rule

__all__ = [
    "PRECISION_THRESHOLDS",
    "NORM_PRECISION_THRESHOLDS",
    "SUCCESS_THRESHOLDS",
    "ABSENT_RULES",
    "PROTOCOLS",
    "Protocol",
    "box_center",
    "box_iou",
    "center_error",
    "normalized_center_error",
    "prepare_predictions",
    "absent_frames",
    "precision_curve",
    "normalized_precision_curve",
    "success_curve",
    "curve_value",
    "auc",
    "long_term_thresholds",
    "long_term_pr_curve",
    "long_term_precision_recall",
    "evaluate_results",
]

PRECISION_THRESHOLDS = np.arange(0, 51, dtype=np.float64)  # 0..50 px
NORM_PRECISION_THRESHOLDS = np.linspace(0.0, 0.5, 51)  # 0..0.5 of the GT size
SUCCESS_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # 0, 0.05, ..., 1


# ----------------------------------------------------------------------------------------------------------------------
# Per-frame quantities
# ----------------------------------------------------------------------------------------------------------------------
def _boxes(a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) or (4,), got {a.shape}")
    return a


def box_center(boxes: Any) -> np.ndarray:
    """Centres ``(x + (w - 1) / 2, y + (h - 1) / 2)`` of ``(N, 4)`` boxes.

    Example:
        >>> box_center([10, 20, 5, 4]).tolist()
        [[12.0, 21.5]]
    """
    b = _boxes(boxes)
    return np.stack([b[:, 0] + (b[:, 2] - 1) / 2, b[:, 1] + (b[:, 3] - 1) / 2], axis=1)


def box_iou(pred: Any, gt: Any) -> np.ndarray:
    """Frame-wise IoU of ``(N, 4)`` boxes on inclusive pixels; 0 where a box is missing (NaN) or empty.

    Example:
        >>> float(box_iou([0, 0, 10, 10], [5, 5, 10, 10])[0])  # 25 / (100 + 100 - 25)
        0.14285714285714285
    """
    a, b = np.broadcast_arrays(_boxes(pred), _boxes(gt))
    ix = np.minimum(a[:, 0] + a[:, 2] - 1, b[:, 0] + b[:, 2] - 1) - np.maximum(a[:, 0], b[:, 0]) + 1
    iy = np.minimum(a[:, 1] + a[:, 3] - 1, b[:, 1] + b[:, 3] - 1) - np.maximum(a[:, 1], b[:, 1]) + 1
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    valid = np.isfinite(iou) & (union > 0) & (a[:, 2] > 0) & (a[:, 3] > 0) & (b[:, 2] > 0) & (b[:, 3] > 0)
    return np.where(valid, np.clip(iou, 0.0, 1.0), 0.0)


def center_error(pred: Any, gt: Any) -> np.ndarray:
    """Euclidean distance between centres in pixels; ``inf`` where a box is missing (NaN)."""
    d = np.linalg.norm(box_center(pred) - box_center(gt), axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def normalized_center_error(pred: Any, gt: Any) -> np.ndarray:
    """Centre offset divided by the GT width / height, then its norm; ``inf`` where undefined."""
    g = _boxes(gt)
    off = box_center(pred) - box_center(g)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.linalg.norm(off / g[:, 2:4], axis=1)
    return np.where(np.isfinite(d), d, np.inf)


def prepare_predictions(pred: Any, gt: Any, init_from_gt: bool = True, fix_invalid: bool = True) -> np.ndarray:
    """Toolkit pre-processing of a result: truncate to the GT length, frame 0 := GT box (``init_from_gt``), and give
    predictions with ``w <= 0``, ``h <= 0`` or NaN values the previous box (``fix_invalid``); both as in LasHeR's
    toolkit (RGBT234 / GTOT turn both off, see ``PROTOCOLS``).

    Raises:
        ValueError: fewer predictions than ground-truth frames.

    Example:
        >>> prepare_predictions([[1, 1, 4, 4], [2, 2, 0, 5], [3, 3, 4, 4]], [[0, 0, 4, 4]] * 3)[1].tolist()
        [0.0, 0.0, 4.0, 4.0]
    """
    p = _boxes(pred).copy()
    g = _boxes(gt)
    if len(p) < len(g):
        raise ValueError(f"result has {len(p)} boxes but the ground truth has {len(g)} frames")
    p = p[: len(g)]
    if init_from_gt and len(p):
        p[0] = g[0]
    if fix_invalid:
        bad = ~np.isfinite(p).all(axis=1) | (p[:, 2] <= 0) | (p[:, 3] <= 0)
        for i in np.flatnonzero(bad):
            if i > 0:
                p[i] = p[i - 1]
    return p


def absent_frames(gt: Any, rule: str = "exclude") -> np.ndarray:
    """Frames where the target counts as absent: NaN / ``w <= 0`` / ``h <= 0``; with ``rule="lasher"`` any
    coordinate ``<= 0`` (the LasHeR toolkit test, which also catches boxes touching the top/left border)."""
    g = _boxes(gt)
    absent = ~np.isfinite(g).all(axis=1) | (g[:, 2] <= 0) | (g[:, 3] <= 0)
    if rule == "lasher":
        with np.errstate(invalid="ignore"):
            absent |= (g <= 0).any(axis=1)
    return absent


def _threshold_curve(
    errors: np.ndarray, absent: np.ndarray, thresholds: np.ndarray, rule: str, hit_if_absent: bool, compare: np.ufunc
) -> np.ndarray:
    """Fraction of frames with ``compare(error, t)`` true for each threshold ``t`` (``np.less_equal``,
    ``np.less`` or ``np.greater``), with absent frames handled by ``rule``."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if rule == "exclude":
        errors = errors[~absent]
    if errors.size == 0:
        return np.full(thresholds.shape, np.nan)
    hits = compare(errors[:, None], thresholds[None])
    if rule == "lasher":
        hits[absent] = hit_if_absent
    elif rule == "miss":
        hits[absent] = False
    return hits.mean(axis=0)


def _combine(errors: list[np.ndarray], reduce: str) -> np.ndarray:
    stack = np.stack(errors)
    return stack.min(axis=0) if reduce == "min" else stack.max(axis=0)


# ----------------------------------------------------------------------------------------------------------------------
# Per-sequence curves
# ----------------------------------------------------------------------------------------------------------------------
def precision_curve(
    pred: Any,
    gt: Any,
    thresholds: Any = PRECISION_THRESHOLDS,
    *,
    gt_x: Any = None,
    absent: str = "exclude",
    prepare: bool = True,
    strict: bool = False,
) -> np.ndarray:
    """Precision curve of one sequence: fraction of frames with centre error ``<= θ`` for each θ (pixels).

    Args:
        pred: ``(M, 4)`` predicted boxes (``M >= N``).
        gt: ``(N, 4)`` ground truth (NaN rows = absent).
        thresholds: distance thresholds in pixels (default 0..50; PR = value at 20, GTOT at 5).
        gt_x: optional second ground truth; the distance is the minimum over both (RGBT234 / GTOT "MPR").
        absent: ``"exclude"`` (absent frames leave the denominator), ``"miss"`` (they count as misses) or
            ``"lasher"`` (any GT coordinate ``<= 0``: hit for PR/NPR, miss for SR, kept in the denominator).
        prepare: apply :func:`prepare_predictions` first.
        strict: count a frame only if its error is ``< θ`` (the GTOT toolkit), so an error of exactly θ is a miss.

    Example:
        >>> gt = np.array([[0, 0, 10, 10]] * 3, float)
        >>> pred = np.array([[0, 0, 10, 10], [3, 4, 10, 10], [30, 0, 10, 10]], float)
        >>> precision_curve(pred, gt, [5, 20]).tolist()  # distances 0, 5, 30
        [0.6666666666666666, 0.6666666666666666]
    """
    check_absent_rule(absent)
    g = _boxes(gt)
    p = prepare_predictions(pred, g) if prepare else _boxes(pred)[: len(g)]
    errors = [center_error(p, g)] + ([center_error(p, _boxes(gt_x))] if gt_x is not None else [])
    compare = np.less if strict else np.less_equal
    return _threshold_curve(_combine(errors, "min"), absent_frames(g, absent), thresholds, absent, True, compare)


def normalized_precision_curve(
    pred: Any,
    gt: Any,
    thresholds: Any = NORM_PRECISION_THRESHOLDS,
    *,
    gt_x: Any = None,
    absent: str = "exclude",
    prepare: bool = True,
) -> np.ndarray:
    """Normalised precision curve (centre offset / GT size; NPR = value at 0.2); arguments as `precision_curve`."""
    check_absent_rule(absent)
    g = _boxes(gt)
    p = prepare_predictions(pred, g) if prepare else _boxes(pred)[: len(g)]
    errors = [normalized_center_error(p, g)]
    if gt_x is not None:
        errors.append(normalized_center_error(p, _boxes(gt_x)))
    return _threshold_curve(_combine(errors, "min"), absent_frames(g, absent), thresholds, absent, True, np.less_equal)


def success_curve(
    pred: Any,
    gt: Any,
    thresholds: Any = SUCCESS_THRESHOLDS,
    *,
    gt_x: Any = None,
    absent: str = "exclude",
    prepare: bool = True,
) -> np.ndarray:
    """Success curve of one sequence: fraction of frames with IoU ``> τ`` (SR = mean of the curve).

    With ``gt_x`` the overlap is the maximum over both ground truths (RGBT234 / GTOT "MSR"). ``absent`` as in
    :func:`precision_curve` (``"lasher"``: absent frames are misses).
    """
    check_absent_rule(absent)
    g = _boxes(gt)
    p = prepare_predictions(pred, g) if prepare else _boxes(pred)[: len(g)]
    overlaps = [box_iou(p, g)] + ([box_iou(p, _boxes(gt_x))] if gt_x is not None else [])
    return _threshold_curve(_combine(overlaps, "max"), absent_frames(g, absent), thresholds, absent, False, np.greater)


def curve_value(curve: Any, thresholds: Any, at: float) -> float:
    """Value of ``curve`` at threshold ``at`` (which must be one of ``thresholds``, up to 1e-9)."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    idx = np.flatnonzero(np.abs(thresholds - at) < 1e-9)
    if idx.size == 0:
        raise ValueError(f"threshold {at} is not one of the curve thresholds {thresholds.tolist()}")
    return float(np.asarray(curve, dtype=np.float64)[..., idx[0]])


def auc(curve: Any, rule: str = "mean") -> float:
    """Area under a success curve on the 21 thresholds: ``"mean"`` of the points (LasHeR, RGBT234, OTB) or
    ``"trapezoid"`` (the GTOT toolkit)."""
    c = np.asarray(curve, dtype=np.float64)
    if rule == "mean":
        return float(c.mean())
    if rule == "trapezoid":
        return float(((c[1:] + c[:-1]) / 2).sum() / (len(c) - 1))
    raise ValueError(f"auc rule must be 'mean' or 'trapezoid', got {rule!r}")


# ----------------------------------------------------------------------------------------------------------------------
# Long-term (DepthTrack / VOT-LT) precision, recall and F-score
# ----------------------------------------------------------------------------------------------------------------------
def long_term_thresholds(confidences: Any, resolution: int = 100) -> np.ndarray:
    """Confidence thresholds as in the VOT toolkit: scores sorted in decreasing order; with more than
    ``resolution - 2`` scores, ``resolution - 2`` evenly spaced quantiles of them; framed by ``+inf`` and ``-inf``."""
    s = np.asarray(confidences, dtype=np.float64).ravel()
    s = np.sort(s[np.isfinite(s)])[::-1]
    k = resolution - 2
    if s.size > k:
        delta = s.size // k
        idx = np.round(np.linspace(delta, s.size - delta, k)).astype(int)
        s = s[np.clip(idx, 0, s.size - 1)]
    return np.concatenate([[np.inf], s, [-np.inf]])


def long_term_pr_curve(
    pred: Any, confidence: Any, gt: Any, thresholds: Any, skip_first: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Tracking precision and recall of one sequence at each confidence threshold τ.

    ``Pr(τ)`` = mean overlap over frames with confidence ``>= τ`` (1 if there is none); ``Re(τ)`` = summed overlap
    over those frames / number of frames where the target is present. Overlap is 0 where the GT is absent. With
    ``skip_first`` the initialisation frame is never a "reported" frame but counts in the recall denominator, as in
    the VOT toolkit where frame 0 of the trajectory is a special (initialisation) region.
    """
    g = _boxes(gt)
    p = _boxes(pred)
    if len(p) < len(g):
        raise ValueError(f"result has {len(p)} boxes but the ground truth has {len(g)} frames")
    p = p[: len(g)]
    conf = np.asarray(confidence, dtype=np.float64).ravel()[: len(g)].copy()
    if len(conf) < len(g):
        raise ValueError(f"result has {len(conf)} confidences but the ground truth has {len(g)} frames")
    present = ~absent_frames(g)
    overlaps = np.where(present, box_iou(p, g), 0.0)
    if skip_first and len(conf):
        conf[0] = np.nan  # never >= any threshold
    thresholds = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reported = conf[None, :] >= thresholds[:, None]  # (T, N)
    count = reported.sum(axis=1)
    summed = (reported * overlaps[None]).sum(axis=1)
    precision = np.where(count > 0, summed / np.maximum(count, 1), 1.0)
    n_present = int(present.sum())
    recall = summed / n_present if n_present > 0 else np.zeros_like(summed)
    return precision, recall


def long_term_precision_recall(
    preds: SequenceABC[Any],
    confidences: SequenceABC[Any],
    gts: SequenceABC[Any],
    resolution: int = 100,
    skip_first: bool = True,
) -> dict[str, Any]:
    """DepthTrack / VOT long-term measures over several sequences.

    Thresholds come from all the tracker's confidences (:func:`long_term_thresholds`); precision and recall curves
    are averaged over sequences; ``F = max_τ 2·Pr·Re / (Pr + Re)`` and Pr, Re are reported at that τ.

    Returns:
        dict with ``precision``, ``recall``, ``F``, ``threshold`` and the averaged curves ``precision_curve``,
        ``recall_curve``, ``f_curve`` and ``thresholds``.
    """
    if not (len(preds) == len(confidences) == len(gts)) or len(gts) == 0:
        raise ValueError("preds, confidences and gts must be non-empty lists of the same length")
    all_scores = []
    for conf, gt in zip(confidences, gts):
        c = np.asarray(conf, dtype=np.float64).ravel()[: len(_boxes(gt))]
        all_scores.append(c[1:] if skip_first else c)
    thresholds = long_term_thresholds(np.concatenate(all_scores), resolution)
    curves = [long_term_pr_curve(p, c, g, thresholds, skip_first) for p, c, g in zip(preds, confidences, gts)]
    precision = np.mean([c[0] for c in curves], axis=0)
    recall = np.mean([c[1] for c in curves], axis=0)
    denom = precision + recall
    f = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    best = int(np.argmax(f))
    return {
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "F": float(f[best]),
        "threshold": float(thresholds[best]),
        "precision_curve": precision,
        "recall_curve": recall,
        "f_curve": f,
        "thresholds": thresholds,
    }


# ----------------------------------------------------------------------------------------------------------------------
# Protocols and the summary
def _unpack_result(name: str, result: Any) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Accept ``boxes``, ``(boxes, confidences)`` or ``(boxes, confidences, fps)``."""
    if isinstance(result, np.ndarray):
        return _boxes(result), None, math.nan
    if isinstance(result, (tuple, list)) and len(result) in (2, 3) and np.ndim(result[0]) == 2:
        conf = None if result[1] is None else np.asarray(result[1], dtype=np.float64).ravel()
        fps = float(result[2]) if len(result) == 3 and result[2] is not None else math.nan
        return _boxes(result[0]), conf, fps
    try:
        return _boxes(result), None, math.nan
    except ValueError:
        raise ValueError(f"result for sequence {name!r}: expected boxes or (boxes, confidences, fps)") from None


def _aggregate(curves: list[np.ndarray], weights: list[int], pool: bool) -> np.ndarray:
    c = np.stack(curves)
    keep = np.isfinite(c).all(axis=1)
    if not keep.any():
        return np.full(c.shape[1], np.nan)
    if pool:
        w = np.asarray(weights, dtype=np.float64)[keep]
        return (c[keep] * w[:, None]).sum(axis=0) / w.sum()
    return c[keep].mean(axis=0)


def evaluate_results(
    sequences: SequenceABC[Any],
    results: Mapping[str, Any],
    protocol: str | Protocol | None = None,
) -> dict[str, Any]:
    """Score tracking results on sequences.

    Args:
        sequences: :class:`~srft_peft.tracking.datasets.Sequence` objects (``name``, ``gt``, optional ``gt_x``).
        results: ``{sequence name: boxes}`` or ``{name: (boxes, confidences, fps)}`` (as from ``run_tracker``).
        protocol: a name of :data:`PROTOCOLS` or a :class:`Protocol`; ``None`` takes the protocol of the registered
            dataset ``sequences[0].dataset`` (:data:`~srft_peft.tracking.datasets.DATASETS`; a name that is not
            registered is a ``ValueError``), or ``"default"`` for sequences of no benchmark (``dataset=""``).

    Returns:
        dict with ``PR``, ``NPR``, ``SR`` (fractions), ``MPR``/``MSR`` (two-GT protocols), ``precision``/``recall``/
        ``F`` (depthtrack), the averaged curves ``precision_curve``, ``norm_precision_curve``, ``success_curve`` with
        their ``*_thresholds``, ``fps`` (mean over sequences, NaN if unknown), ``num_sequences``, ``protocol`` and
        ``per_sequence`` scores.

    Example:
        >>> summary = evaluate_results(seqs, run_tracker(tracker, seqs), protocol="lasher")  # doctest: +SKIP
        >>> print(f"PR {summary['PR']:.3f}  SR {summary['SR']:.3f}")  # doctest: +SKIP
    """
    sequences = list(sequences)
    if not sequences:
        raise ValueError("evaluate_results needs at least one sequence")
    if protocol is None:
        dataset = getattr(sequences[0], "dataset", "")
        protocol = get_dataset(dataset).protocol if dataset else PROTOCOLS["default"]
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose one of {sorted(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    missing = [s.name for s in sequences if s.name not in results]
    if missing:
        raise KeyError(f"no results for {len(missing)} sequence(s): {missing[:5]}")

    rule = protocol.absent
    pr_c, npr_c, sr_c, mpr_c, msr_c, lengths, fps = [], [], [], [], [], [], []
    preds, confs, gts = [], [], []
    per_sequence: dict[str, dict[str, float]] = {}
    for seq in sequences:
        boxes, conf, seq_fps = _unpack_result(seq.name, results[seq.name])
        gt = np.asarray(seq.gt, dtype=np.float64)
        try:
            pred = prepare_predictions(boxes, gt, init_from_gt=protocol.init_from_gt, fix_invalid=protocol.fix_invalid)
        except ValueError as err:
            raise ValueError(f"sequence {seq.name!r}: {err}") from None
        strict = protocol.strict_precision
        pr_c.append(precision_curve(pred, gt, PRECISION_THRESHOLDS, absent=rule, prepare=False, strict=strict))
        npr_c.append(normalized_precision_curve(pred, gt, NORM_PRECISION_THRESHOLDS, absent=rule, prepare=False))
        sr_c.append(success_curve(pred, gt, SUCCESS_THRESHOLDS, absent=rule, prepare=False))
        lengths.append(len(gt))
        fps.append(seq_fps)
        scores = {
            "PR": curve_value(pr_c[-1], PRECISION_THRESHOLDS, protocol.pr_threshold),
            "NPR": curve_value(npr_c[-1], NORM_PRECISION_THRESHOLDS, protocol.npr_threshold),
            "SR": auc(sr_c[-1], protocol.auc_rule),
        }
        if protocol.two_gt:
            gt_x = seq.gt_x if getattr(seq, "gt_x", None) is not None else gt
            mpr_c.append(
                precision_curve(pred, gt, PRECISION_THRESHOLDS, gt_x=gt_x, absent=rule, prepare=False, strict=strict)
            )
            msr_c.append(success_curve(pred, gt, SUCCESS_THRESHOLDS, gt_x=gt_x, absent=rule, prepare=False))
            scores["MPR"] = curve_value(mpr_c[-1], PRECISION_THRESHOLDS, protocol.pr_threshold)
            scores["MSR"] = auc(msr_c[-1], protocol.auc_rule)
        if protocol.long_term:
            if conf is None:
                raise ValueError(f"protocol {protocol.name!r} needs confidences; none given for {seq.name!r}")
            # Long-term scoring uses the raw predictions (an empty box simply has zero overlap).
            preds.append(boxes)
            confs.append(conf)
            gts.append(gt)
        per_sequence[seq.name] = scores

    pr = _aggregate(pr_c, lengths, protocol.pool_frames)
    npr = _aggregate(npr_c, lengths, protocol.pool_frames)
    sr = _aggregate(sr_c, lengths, protocol.pool_frames)
    finite_fps = [f for f in fps if np.isfinite(f)]
    summary: dict[str, Any] = {
        "protocol": protocol.name,
        "num_sequences": len(sequences),
        "PR": curve_value(pr, PRECISION_THRESHOLDS, protocol.pr_threshold),
        "NPR": curve_value(npr, NORM_PRECISION_THRESHOLDS, protocol.npr_threshold),
        "SR": auc(sr, protocol.auc_rule),
        "precision_curve": pr,
        "precision_thresholds": PRECISION_THRESHOLDS.copy(),
        "norm_precision_curve": npr,
        "norm_precision_thresholds": NORM_PRECISION_THRESHOLDS.copy(),
        "success_curve": sr,
        "success_thresholds": SUCCESS_THRESHOLDS.copy(),
        "pr_threshold": protocol.pr_threshold,
        "fps": float(np.mean(finite_fps)) if finite_fps else math.nan,
        "per_sequence": per_sequence,
    }
    if protocol.two_gt:
        mpr = _aggregate(mpr_c, lengths, protocol.pool_frames)
        msr = _aggregate(msr_c, lengths, protocol.pool_frames)
        summary.update(
            MPR=curve_value(mpr, PRECISION_THRESHOLDS, protocol.pr_threshold),
            MSR=auc(msr, protocol.auc_rule),
            max_precision_curve=mpr,
            max_success_curve=msr,
        )
    if protocol.long_term:
        lt = long_term_precision_recall(preds, confs, gts)
        summary.update(
            precision=lt["precision"],
            recall=lt["recall"],
            F=lt["F"],
            threshold=lt["threshold"],
            lt_precision_curve=lt["precision_curve"],
            lt_recall_curve=lt["recall_curve"],
            lt_f_curve=lt["f_curve"],
        )
    return summary
