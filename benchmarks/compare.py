"""Paired comparisons of fine-tuning methods over (seed, sequence) pairs, with a two-way bootstrap.

A **run** is one fine-tuned model (one method, one seed) scored on a test set; its record is the ``per_sequence``
mapping of :func:`~srft_peft.tracking.metrics.evaluate_results` (``{sequence name: {"SR": ..., "PR": ..., ...}}``)
or the whole summary that holds it. The runs of a method are ``{seed: record}`` and those of several methods
``{method: {seed: record}}``.

Two methods are compared on the **paired differences** ``d[s, q] = a[s, q] - b[s, q]`` of a metric over the cells
(seed ``s``, sequence ``q``): both must have run the same seeds on the same sequences. The interval of the mean
difference comes from a **two-way bootstrap**: each resample draws the seeds with replacement and, independently,
the sequences with replacement, and its statistic is the mean of ``d`` over the crossed resampled cells. The interval
is the percentile interval of these means.

Why not resample the cells? A sequence's difficulty moves all seeds together (an easy sequence is easy for every
seed), so the ``S`` cells of one sequence are not independent draws: the mean's variance has a term
``var(sequence effect) / Q`` that cell resampling estimates as about ``var / (S * Q)``, ``S`` times too small, and
its intervals are too narrow (they cover the truth far less often than stated; ``tests/examples/test_compare.py``
shows it). Resampling whole sequences (and whole seeds, for the effects a seed shares over sequences) keeps that
structure. The two-way bootstrap errs slightly on the wide side (the seed × sequence noise enters both margins);
with few seeds (3) the seed part of the interval is itself rough, which is a reason to report the SD over seeds
next to it.

Example:
    >>> a = {0: {"s1": {"SR": 0.62}, "s2": {"SR": 0.48}}, 1: {"s1": {"SR": 0.60}, "s2": {"SR": 0.50}}}
    >>> b = {0: {"s1": {"SR": 0.58}, "s2": {"SR": 0.47}}, 1: {"s1": {"SR": 0.59}, "s2": {"SR": 0.46}}}
    >>> d = paired_difference(a, b, "SR")
    >>> round(d.mean, 4), d.n_pairs
    (0.025, 4)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "PerSequence",
    "MethodRuns",
    "Runs",
    "DEFAULT_RESAMPLES",
    "PairedDifference",
    "MethodSummary",
    "ModalityVerdict",
    "ClaimVerdict",
    "MethodComparison",
    "bootstrap_means",
    "paired_difference",
    "summarize",
    "decide_claim",
    "compare_methods",
    "format_comparison_table",
]

PerSequence = Mapping[str, Mapping[str, float]]
"""``evaluate_results(...)["per_sequence"]``: sequence name -> metric name -> value (or the summary holding it)."""
MethodRuns = Mapping[Hashable, Any]
"""One method's runs: seed -> :data:`PerSequence` (or the ``evaluate_results`` summary holding it)."""
Runs = Mapping[str, MethodRuns]
"""Several methods' runs: method name -> :data:`MethodRuns`."""

DEFAULT_RESAMPLES = 10_000


# ----------------------------------------------------------------------------------------------------------------------
# Records -> (seed x sequence) arrays
# ----------------------------------------------------------------------------------------------------------------------
def _records(run: Any, where: str) -> Mapping[str, Mapping[str, float]]:
    """The per-sequence scores of one run: the mapping itself or the ``per_sequence`` entry of a summary."""
    if not isinstance(run, Mapping):
        raise TypeError(f"{where}: expected a mapping sequence -> scores, got {type(run).__name__}")
    inner = run.get("per_sequence")
    if inner is None and "num_sequences" in run:
        raise ValueError(f"{where}: an evaluate_results summary without its 'per_sequence' scores; keep them to pair runs")
    records = inner if isinstance(inner, Mapping) else run
    if not records:
        raise ValueError(f"{where}: no sequences")
    return records


def _value(scores: Any, metric: str, where: str) -> float:
    if not isinstance(scores, Mapping):
        raise TypeError(f"{where}: expected a mapping metric -> value, got {type(scores).__name__}")
    if metric not in scores:
        raise ValueError(f"{where}: unknown metric {metric!r}; it has {sorted(scores)}")
    value = scores[metric]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: {metric} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where}: {metric} is {value!r}; every paired value must be finite")
    return float(value)


def _grid(runs: MethodRuns, metric: str, label: str) -> tuple[list[Hashable], list[str], np.ndarray]:
    """Seeds, sequences and the ``(S, Q)`` array of ``metric`` of one method; every seed must have run the same
    sequences."""
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs of {label!r}: expected a mapping seed -> per-sequence scores, got {type(runs).__name__}")
    if not runs:
        raise ValueError(f"runs of {label!r}: no seeds")
    seeds = list(runs)
    first = _records(runs[seeds[0]], f"{label!r} seed {seeds[0]!r}")
    sequences = list(first)
    values = np.empty((len(seeds), len(sequences)))
    for i, seed in enumerate(seeds):
        where = f"{label!r} seed {seed!r}"
        records = _records(runs[seed], where)
        missing, extra = _difference(sequences, records), _difference(records, sequences)
        if missing or extra:
            raise ValueError(
                f"{where} has different sequences from seed {seeds[0]!r}: missing {missing}, extra {extra}"
            )
        for j, name in enumerate(sequences):
            values[i, j] = _value(records[name], metric, f"{where} sequence {name!r}")
    return seeds, sequences, values


def _difference(items: Iterable[Hashable], other: Iterable[Hashable]) -> list[Hashable]:
    """Items not in ``other``, in order (at most 5, for error messages)."""
    other = set(other)
    return [x for x in items if x not in other][:5]


def _check_resamples(n_resamples: int) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")


def _check_confidence(confidence: float) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


# ----------------------------------------------------------------------------------------------------------------------
# The bootstrap and the paired difference
# ----------------------------------------------------------------------------------------------------------------------
def bootstrap_means(
    cells: Any, n_resamples: int = DEFAULT_RESAMPLES, rng: np.random.Generator | int | None = 0
) -> np.ndarray:
    """Two-way bootstrap distribution of the mean of a ``(S, Q)`` array (seeds x sequences).

    Resample ``b`` draws ``S`` row indices, then ``Q`` column indices, uniformly with replacement (in that order,
    ``rng.integers`` with sizes ``(n_resamples, S)`` and ``(n_resamples, Q)``) and returns the mean of
    ``cells[rows][:, cols]``, computed from the draw counts as ``rows_count @ cells @ cols_count / (S * Q)``.

    Returns:
        ``(n_resamples,)`` array of resampled means.
    """
    cells = np.asarray(cells, dtype=np.float64)
    if cells.ndim != 2 or cells.size == 0:
        raise ValueError(f"cells must be a non-empty (seeds, sequences) array, got shape {cells.shape}")
    _check_resamples(n_resamples)
    rng = np.random.default_rng(rng)
    s, q = cells.shape
    rows = rng.integers(0, s, size=(n_resamples, s))
    cols = rng.integers(0, q, size=(n_resamples, q))
    row_counts = _counts(rows, s)
    col_counts = _counts(cols, q)
    return np.einsum("bq,bq->b", row_counts @ cells, col_counts) / (s * q)


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """``(B, n)`` counts of each index among the ``(B, k)`` draws."""
    b = draws.shape[0]
    flat = (np.arange(b)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` of one metric over the (seed, sequence) pairs."""

    metric: str
    mean: float  # mean of the paired differences
    sd: float  # sample SD (ddof=1) of the paired differences; NaN for one pair
    n_pairs: int
    n_seeds: int
    n_sequences: int
    low: float  # percentile bootstrap interval of the mean
    high: float
    confidence: float
    n_resamples: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``+1.2 [-0.3, +2.6]`` (values times ``scale``)."""
        return f"{self.mean * scale:+.{digits}f} [{self.low * scale:+.{digits}f}, {self.high * scale:+.{digits}f}]"


def paired_difference(
    a: MethodRuns,
    b: MethodRuns,
    metric: str = "SR",
    *,
    labels: tuple[str, str] = ("a", "b"),
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Mean, SD and two-way bootstrap interval of ``a - b`` over the (seed, sequence) pairs.

    Args:
        a, b: runs of two methods, ``{seed: per-sequence scores}``; both must have the same seeds, and all their
            runs the same sequences.
        metric: a key of the per-sequence scores (``"SR"``, ``"PR"``, ``"NPR"``, ...).
        labels: the methods' names, for error messages.
        n_resamples: bootstrap resamples (see :func:`bootstrap_means`).
        confidence: level of the percentile interval.
        seed: seed of the bootstrap's random generator (the result is reproducible).

    Raises:
        ValueError: no seeds or sequences, unpaired seeds or sequences (named), an unknown metric, a non-finite value.
        TypeError: a value that is not a number.
    """
    _check_resamples(n_resamples)
    _check_confidence(confidence)
    seeds_a, seqs_a, va = _grid(a, metric, labels[0])
    seeds_b, seqs_b, vb = _grid(b, metric, labels[1])
    for what, xs, ys in (("seeds", seeds_a, seeds_b), ("sequences", seqs_a, seqs_b)):
        only_a, only_b = _difference(xs, ys), _difference(ys, xs)
        if only_a or only_b:
            raise ValueError(
                f"unpaired {what}: {labels[0]!r} has {only_a} that {labels[1]!r} lacks, "
                f"{labels[1]!r} has {only_b} that {labels[0]!r} lacks"
            )
    vb = vb[np.ix_([seeds_b.index(s) for s in seeds_a], [seqs_b.index(q) for q in seqs_a])]
    diff = va - vb
    means = bootstrap_means(diff, n_resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return PairedDifference(
        metric=metric,
        mean=float(diff.mean()),
        sd=float(diff.std(ddof=1)) if diff.size > 1 else math.nan,
        n_pairs=int(diff.size),
        n_seeds=diff.shape[0],
        n_sequences=diff.shape[1],
        low=float(low),
        high=float(high),
        confidence=float(confidence),
        n_resamples=int(n_resamples),
    )


# ----------------------------------------------------------------------------------------------------------------------
# Per-method summaries
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSummary:
    """One method's metric: mean over seeds of each run's mean over sequences, and the SD over seeds."""

    metric: str
    mean: float
    sd: float  # sample SD (ddof=1) of the per-run means over seeds; NaN with one seed
    n_seeds: int
    n_sequences: int

    def format(self, scale: float = 100.0, digits: int = 1) -> str:
        """``57.3 (1.2)``, or ``57.3 (n/a)`` with one seed."""
        sd = "n/a" if math.isnan(self.sd) else f"{self.sd * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ({sd})"


def summarize(runs: Runs, metric: str = "SR") -> dict[str, MethodSummary]:
    """Per method: mean over seeds of the per-run mean over sequences, its sample SD over seeds (ddof=1; NaN with a
    single seed) and the number of sequences.

    The per-run mean is the unweighted mean of the per-sequence values; it equals ``evaluate_results``'s ``SR`` / ``PR``
    / ``NPR`` except under frame-pooling protocols (GTOT), which weight sequences by their length.

    Raises:
        ValueError: no methods, or as :func:`paired_difference` for a method's runs.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError(f"runs must be a non-empty mapping method -> runs, got {runs!r}")
    out = {}
    for method, method_runs in runs.items():
        _, sequences, values = _grid(method_runs, metric, method)
        per_run = values.mean(axis=1)
        out[method] = MethodSummary(
            metric=metric,
            mean=float(per_run.mean()),
            sd=float(per_run.std(ddof=1)) if len(per_run) > 1 else math.nan,
            n_seeds=len(per_run),
            n_sequences=len(sequences),
        )
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The claim
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModalityVerdict:
    """The claim's parts on one modality."""

    modality: str
    target: PairedDifference  # method - reference on the target test set
    retention: PairedDifference  # method - reference on the RGB test set
    target_ok: bool  # target.high >= 0: the interval includes or exceeds 0
    retention_ok: bool  # retention.low > 0: the interval is above 0
    dominated_by: tuple[str, ...]  # competitors that dominate the method on (target, retention) point estimates

    @property
    def passed(self) -> bool:
        """Target not worse and retention better than the reference on this modality."""
        return self.target_ok and self.retention_ok


@dataclass(frozen=True)
class ClaimVerdict:
    """The claim's outcome, with the reasons."""

    method: str
    reference: str
    competitors: tuple[str, ...]
    modalities: tuple[ModalityVerdict, ...]
    min_modalities: int
    passed: bool
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        head = f"claim for {self.method!r}: {'PASSED' if self.passed else 'FAILED'}"
        return "\n".join([head] + [f"- {r}" for r in self.reasons])


def _dominators(target: Mapping[str, MethodSummary], retention: Mapping[str, MethodSummary], method: str,
                competitors: SequenceABC[str]) -> tuple[str, ...]:
    """Competitors ``c`` with ``target[c] >= target[method]`` and ``retention[c] >= retention[method]``, one of them
    strictly."""
    mine = (target[method].mean, retention[method].mean)
    out = []
    for c in competitors:
        theirs = (target[c].mean, retention[c].mean)
        if all(t >= m for t, m in zip(theirs, mine)) and any(t > m for t, m in zip(theirs, mine)):
            out.append(c)
    return tuple(out)


def _require(runs: Runs, names: Iterable[str], where: str) -> None:
    if not isinstance(runs, Mapping):
        raise TypeError(f"{where}: expected a mapping method -> runs, got {type(runs).__name__}")
    missing = [n for n in names if n not in runs]
    if missing:
        raise ValueError(f"{where}: no runs for method(s) {missing}; it has {sorted(runs)}")


def decide_claim(
    target: Mapping[str, Runs],
    retention: Mapping[str, Runs],
    *,
    method: str = "srft",
    reference: str = "full",
    competitors: SequenceABC[str] = ("ewc", "lora"),
    metric: str = "SR",
    min_modalities: int = 2,
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> ClaimVerdict:
    """Decide "``method`` keeps the target skill of ``reference`` and retains more of the RGB skill, and no
    competitor beats it on both".

    On each modality ``m`` (a key of ``target``):

    * **target not worse**: the interval of ``target(method) - target(reference)`` includes or exceeds 0, i.e.
      its upper bound is ``>= 0``;
    * **retention better**: the interval of ``retention(method) - retention(reference)`` is above 0 (lower bound
      ``> 0``);
    * **dominated**: a competitor ``c`` dominates ``method`` when its point estimates (mean over the (seed,
      sequence) cells, :func:`summarize`) are ``>=`` on both target and retention ``metric`` and ``>`` on at least
      one.

    The claim passes when target-not-worse and retention-better both hold on at least ``min_modalities`` modalities
    and ``method`` is dominated on no modality.

    Args:
        target: ``{modality: {method: {seed: per-sequence scores}}}`` on the target test sets.
        retention: the same on the RGB-only test sets (the models fed ``[rgb, rgb]``); same modalities.
        method, reference, competitors: method names in the runs.
        metric: the compared metric.
        min_modalities: how many modalities must pass.
        n_resamples, confidence, seed: as in :func:`paired_difference`.

    Raises:
        ValueError: no modalities, modalities or methods missing from a side (named), and as
            :func:`paired_difference`.
    """
    if not isinstance(target, Mapping) or not target:
        raise ValueError(f"target must be a non-empty mapping modality -> runs, got {target!r}")
    if not isinstance(retention, Mapping) or set(retention) != set(target):
        got = sorted(retention) if isinstance(retention, Mapping) else retention
        raise ValueError(f"retention must have the target's modalities {sorted(target)}, got {got}")
    if isinstance(min_modalities, bool) or not isinstance(min_modalities, int) or min_modalities < 1:
        raise ValueError(f"min_modalities must be a positive integer, got {min_modalities!r}")
    competitors = tuple(competitors)
    names = (method, reference, *competitors)
    for modality in target:
        _require(target[modality], names, f"target[{modality!r}]")
        _require(retention[modality], names, f"retention[{modality!r}]")
    options = dict(n_resamples=n_resamples, confidence=confidence, seed=seed, labels=(method, reference))
    verdicts, reasons = [], []
    for modality in target:
        tgt, ret = target[modality], retention[modality]
        d_target = paired_difference(tgt[method], tgt[reference], metric, **options)
        d_retention = paired_difference(ret[method], ret[reference], metric, **options)
        target_means = summarize({n: tgt[n] for n in names}, metric)
        retention_means = summarize({n: ret[n] for n in names}, metric)
        v = ModalityVerdict(
            modality=modality,
            target=d_target,
            retention=d_retention,
            target_ok=d_target.high >= 0,
            retention_ok=d_retention.low > 0,
            dominated_by=_dominators(target_means, retention_means, method, competitors),
        )
        verdicts.append(v)
        reasons.append(_modality_reason(v, reference))
    n_passed = sum(v.passed for v in verdicts)
    dominated = [v for v in verdicts if v.dominated_by]
    reasons.append(f"{n_passed} of {len(verdicts)} modalities pass (need {min_modalities})")
    reasons.append(
        "dominated on " + ", ".join(f"{v.modality} by {list(v.dominated_by)}" for v in dominated)
        if dominated else f"not dominated by {list(competitors)} on any modality"
    )
    return ClaimVerdict(
        method=method,
        reference=reference,
        competitors=competitors,
        modalities=tuple(verdicts),
        min_modalities=min_modalities,
        passed=n_passed >= min_modalities and not dominated,
        reasons=tuple(reasons),
    )


def _modality_reason(v: ModalityVerdict, reference: str) -> str:
    level = f"{round(100 * v.target.confidence)} %"
    target = "not worse" if v.target_ok else "worse"
    retention = "better" if v.retention_ok else "not better"
    return (
        f"{v.modality}: target {v.target.metric} {target} than {reference!r} "
        f"(Δ {v.target.format()} at {level}, needs upper ≥ 0); retention {v.retention.metric} {retention} "
        f"(Δ {v.retention.format()}, needs lower > 0) -> {'pass' if v.passed else 'fail'}"
    )


# ----------------------------------------------------------------------------------------------------------------------
# The comparison table
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodComparison:
    """One row of the comparison table."""

    method: str
    target: dict[str, MethodSummary]  # metric -> summary on the target test set
    retention: MethodSummary | None  # the compared metric on the RGB test set (None: not evaluated)
    vs_reference: PairedDifference | None  # target metric, method - reference (None on the reference / a baseline)
    retention_vs_reference: PairedDifference | None
    best_other: str | None  # the other method with the best target metric
    vs_best_other: PairedDifference | None
    best_other_retention: str | None  # the other method with the best retention metric
    retention_vs_best_other: PairedDifference | None


def _best_other(summaries: Mapping[str, MethodSummary], method: str, excluded: set[str]) -> str | None:
    candidates = [m for m in summaries if m != method and m not in excluded]
    return max(candidates, key=lambda m: summaries[m].mean) if candidates else None


def compare_methods(
    target: Runs,
    retention: Runs | None = None,
    *,
    reference: str = "full",
    baselines: SequenceABC[str] = (),
    metrics: SequenceABC[str] = ("SR", "PR", "NPR"),
    metric: str = "SR",
    n_resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[MethodComparison]:
    """The rows of a one-modality comparison table.

    Each method gets the mean (SD over seeds) of ``metrics`` on the target set and of ``metric`` on the retention
    set, and the paired differences of ``metric`` against ``reference`` and against the best other method (highest
    point estimate among the methods other than itself, ``reference`` and ``baselines``), on both sets. ``baselines``
    (e.g. the converted model at step 0, scored once) get summaries only.

    Raises:
        ValueError: ``reference`` missing from ``target`` (or from ``retention`` when given), and as
            :func:`paired_difference` / :func:`summarize`.
    """
    _require(target, [reference], "target")
    if retention is not None:
        _require(retention, [reference], "retention")
    excluded = {reference, *baselines}
    paired = [m for m in target if m not in baselines]
    options = dict(n_resamples=n_resamples, confidence=confidence, seed=seed)
    target_summaries = {m: summarize(target, m) for m in metrics}
    primary = target_summaries[metric] if metric in target_summaries else summarize(target, metric)
    ret_summaries = summarize(retention, metric) if retention else {}
    paired_ret = {m: ret_summaries[m] for m in paired if m in ret_summaries}

    def delta(runs: Runs | None, m: str, other: str | None) -> PairedDifference | None:
        if runs is None or other is None or m == other or m not in runs or m in baselines:
            return None
        return paired_difference(runs[m], runs[other], metric, labels=(m, other), **options)

    rows = []
    for m in target:
        best = _best_other({k: primary[k] for k in paired}, m, excluded) if m not in baselines else None
        best_ret = _best_other(paired_ret, m, excluded) if m not in baselines else None
        rows.append(MethodComparison(
            method=m,
            target={k: s[m] for k, s in target_summaries.items()},
            retention=ret_summaries.get(m),
            vs_reference=delta(target, m, reference),
            retention_vs_reference=delta(retention, m, reference),
            best_other=best,
            vs_best_other=delta(target, m, best),
            best_other_retention=best_ret,
            retention_vs_best_other=delta(retention, m, best_ret),
        ))
    return rows


def format_comparison_table(rows: SequenceABC[MethodComparison], reference: str = "full") -> str:
    """Markdown table of :func:`compare_methods` rows, values in %: target metrics ``mean (SD over seeds)``,
    retention, and ``Δ [CI]`` of the compared metric against ``reference`` and the best other method."""
    if not rows:
        raise ValueError("no rows to format")
    metrics = list(rows[0].target)
    first = next((d for r in rows for d in (r.vs_reference, r.vs_best_other) if d is not None), None)
    metric = first.metric if first is not None else metrics[0]
    level = f"{round(100 * first.confidence)} % CI" if first is not None else "CI"
    header = (
        ["method"] + [f"target {k}" for k in metrics] + [f"retention {metric}"]
        + [f"Δ target {metric} vs {reference} [{level}]", f"Δ retention {metric} vs {reference} [{level}]",
           f"Δ target {metric} vs best other [{level}]", f"Δ retention {metric} vs best other [{level}]", "seeds"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.method] + [r.target[k].format() for k in metrics]
        cells.append(r.retention.format() if r.retention is not None else "—")
        cells += [_delta_cell(r.vs_reference), _delta_cell(r.retention_vs_reference),
                  _delta_cell(r.vs_best_other, r.best_other),
                  _delta_cell(r.retention_vs_best_other, r.best_other_retention)]
        cells.append(str(r.target[metrics[0]].n_seeds))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _delta_cell(d: PairedDifference | None, other: str | None = None) -> str:
    if d is None:
        return "—"
    return d.format() + (f" vs {other}" if other else "")
