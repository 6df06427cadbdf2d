"""Paired comparisons: the two-way bootstrap against independent references, its coverage, ddof=1 SDs, the errors,
the claim and the table."""

from __future__ import annotations

import copy
import itertools
import math
import time

import numpy as np
import pytest

from benchmarks.compare import (
    bootstrap_means,
    compare_methods,
    decide_claim,
    format_comparison_table,
    paired_difference,
    summarize,
)
from srft_peft.tracking import evaluate_results
from srft_peft.tracking.datasets import Sequence


def _runs(grid, seeds=None, sequences=None, metric="SR"):
    """{seed: {sequence: {metric: value}}} from a (seeds, sequences) array."""
    grid = np.asarray(grid, float)
    seeds = seeds if seeds is not None else list(range(grid.shape[0]))
    sequences = sequences if sequences is not None else [f"seq{j}" for j in range(grid.shape[1])]
    return {s: {q: {metric: float(grid[i, j])} for j, q in enumerate(sequences)} for i, s in enumerate(seeds)}


# ---------------------------------------------------------------------------------------------------------------------
# The bootstrap against independent references
# ---------------------------------------------------------------------------------------------------------------------
def test_bootstrap_equals_a_loop_over_resamples_with_the_same_draws():
    rng = np.random.default_rng(3)
    cells = rng.normal(size=(3, 7))
    n = 500
    draws = np.random.default_rng(11)
    rows = draws.integers(0, 3, size=(n, 3))
    cols = draws.integers(0, 7, size=(n, 7))
    reference = np.array([cells[np.ix_(rows[b], cols[b])].mean() for b in range(n)])
    np.testing.assert_allclose(bootstrap_means(cells, n, 11), reference, rtol=0, atol=1e-12)


def test_paired_interval_is_the_percentile_interval_of_the_loop_reference():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.3, 0.7, size=(2, 3, 6))
    n = 400
    draws = np.random.default_rng(5)
    rows = draws.integers(0, 3, size=(n, 3))
    cols = draws.integers(0, 6, size=(n, 6))
    d = a - b
    reference = np.quantile([d[np.ix_(rows[k], cols[k])].mean() for k in range(n)], [0.05, 0.95])
    got = paired_difference(_runs(a), _runs(b), "SR", n_resamples=n, confidence=0.9, seed=5)
    assert (got.low, got.high) == pytest.approx(tuple(reference), abs=1e-12)
    assert got.mean == pytest.approx(d.mean()) and got.n_pairs == 18 and (got.n_seeds, got.n_sequences) == (3, 6)


def test_bootstrap_distribution_matches_exact_enumeration():
    # 2 seeds x 2 sequences: 4 x 4 equally likely (row draw, column draw) tuples; the 9 possible means are distinct.
    cells = np.array([[0.0, 1.0], [10.0, 100.0]])
    exact: dict[float, float] = {}
    for rows in itertools.product(range(2), repeat=2):
        for cols in itertools.product(range(2), repeat=2):
            m = round(float(cells[np.ix_(rows, cols)].mean()), 9)
            exact[m] = exact.get(m, 0.0) + 1 / 16
    assert len(exact) == 9
    means = np.round(bootstrap_means(cells, 40_000, 0), 9)
    values, counts = np.unique(means, return_counts=True)
    assert set(values.tolist()) == set(exact)
    for v, c in zip(values, counts):
        assert c / 40_000 == pytest.approx(exact[float(v)], abs=0.01)  # binomial SD <= 0.0025


def test_bootstrap_is_reproducible_and_seeded():
    cells = np.random.default_rng(0).normal(size=(3, 10))
    np.testing.assert_array_equal(bootstrap_means(cells, 100, 1), bootstrap_means(cells, 100, 1))
    assert not np.array_equal(bootstrap_means(cells, 100, 1), bootstrap_means(cells, 100, 2))


def _naive_cell_interval(d, n, rng):
    """Resample the S * Q cells as if independent (the anti-conservative scheme), vectorised."""
    flat = d.ravel()
    means = flat[rng.integers(0, flat.size, size=(n, flat.size))].mean(axis=1)
    return np.quantile(means, [0.025, 0.975])


def test_two_way_interval_covers_while_cell_resampling_under_covers():
    # d[s, q] = truth + sequence effect (shared by the seeds) + seed effect + noise; 200 simulated experiments.
    start = time.perf_counter()
    rng = np.random.default_rng(2024)
    truth, n_seeds, n_seqs, experiments = 0.02, 3, 30, 200
    covered = {"two-way": 0, "cells": 0}
    for _ in range(experiments):
        d = (truth + rng.normal(0, 0.08, n_seqs)[None] + rng.normal(0, 0.01, n_seeds)[:, None]
             + rng.normal(0, 0.03, (n_seeds, n_seqs)))
        low, high = np.quantile(bootstrap_means(d, 1000, rng), [0.025, 0.975])
        covered["two-way"] += low <= truth <= high
        low, high = _naive_cell_interval(d, 1000, rng)
        covered["cells"] += low <= truth <= high
    rate = {k: v / experiments for k, v in covered.items()}
    assert 0.88 <= rate["two-way"] <= 0.99, rate
    assert rate["cells"] < 0.85, rate  # about 0.7: its SE is ~sqrt(S) too small
    assert time.perf_counter() - start < 3.0


# ---------------------------------------------------------------------------------------------------------------------
# SDs (ddof=1) and summaries
# ---------------------------------------------------------------------------------------------------------------------
def test_paired_sd_is_ddof1_by_hand():
    a = _runs([[0.51, 0.52], [0.53, 0.56]])
    b = _runs([[0.50, 0.50], [0.50, 0.50]])
    got = paired_difference(a, b, "SR", n_resamples=10)
    # differences 0.01, 0.02, 0.03, 0.06: mean 0.03, squared deviations (4 + 1 + 0 + 9) e-4, / (4 - 1)
    assert got.mean == pytest.approx(0.03)
    assert got.sd == pytest.approx(math.sqrt(14e-4 / 3))
    assert got.sd != pytest.approx(math.sqrt(14e-4 / 4))  # the ddof=0 value


def test_pairs_are_matched_by_seed_and_sequence_name_not_order():
    a = _runs([[0.6, 0.4], [0.7, 0.5]], seeds=[1, 2], sequences=["x", "y"])
    b_grid = {2: {"y": {"SR": 0.1}, "x": {"SR": 0.2}}, 1: {"y": {"SR": 0.3}, "x": {"SR": 0.4}}}
    got = paired_difference(a, b_grid, "SR", n_resamples=10)
    # (0.6-0.4) + (0.4-0.3) + (0.7-0.2) + (0.5-0.1) = 1.2 over 4 pairs
    assert got.mean == pytest.approx(0.3)


def test_summarize_mean_of_run_means_sd_over_seeds_ddof1():
    runs = {"m": _runs([[0.2, 0.4], [0.5, 0.5], [0.7, 0.9]]), "one": _runs([[0.3, 0.5]])}
    s = summarize(runs, "SR")
    # run means 0.3, 0.5, 0.8: mean 0.5333..., squared deviations 0.0544 + 0.0011 + 0.0711 = 0.12667, / 2
    assert s["m"].mean == pytest.approx(1.6 / 3)
    assert s["m"].sd == pytest.approx(math.sqrt((0.3**2 + 0.5**2 + 0.8**2 - 1.6**2 / 3) / 2))
    assert (s["m"].n_seeds, s["m"].n_sequences) == (3, 2)
    assert math.isnan(s["one"].sd) and s["one"].format() == "40.0 (n/a)"


def test_paired_sd_of_a_single_pair_is_nan():
    got = paired_difference(_runs([[0.5]]), _runs([[0.4]]), "SR", n_resamples=10)
    assert math.isnan(got.sd) and got.mean == pytest.approx(0.1)


def _toy_sequence(name):
    gt = np.array([[10, 10, 20, 20]] * 4, float)
    return Sequence(name, [f"{i}.jpg" for i in range(4)], [], gt, modality="rgb")


def test_accepts_evaluate_results_summaries():
    seqs = [_toy_sequence("p"), _toy_sequence("q")]
    good = {s.name: s.gt.copy() for s in seqs}
    shifted = {s.name: s.gt + [[0, 0, 0, 0], [5, 0, 0, 0], [5, 0, 0, 0], [30, 0, 0, 0]] for s in seqs}
    a = {0: evaluate_results(seqs, good), 1: evaluate_results(seqs, good)}
    b = {0: evaluate_results(seqs, shifted), 1: evaluate_results(seqs, shifted)}
    d = paired_difference(a, b, "PR", n_resamples=10)
    # PR at 20 px: 4/4 frames vs 3/4 (centre errors 0, 5, 5, 30) on each sequence
    assert d.mean == pytest.approx(0.25) and d.n_pairs == 4
    assert summarize({"b": b}, "PR")["b"].mean == pytest.approx(b[0]["PR"])


def test_summary_without_per_sequence_is_refused():
    seqs = [_toy_sequence("p")]
    summary = {k: v for k, v in evaluate_results(seqs, {"p": seqs[0].gt}).items() if k != "per_sequence"}
    with pytest.raises(ValueError, match="'a' seed 0: an evaluate_results summary without its 'per_sequence' scores"):
        paired_difference({0: summary}, {0: summary}, "SR")


# ---------------------------------------------------------------------------------------------------------------------
# Errors name the bad value, and nothing is changed
# ---------------------------------------------------------------------------------------------------------------------
def test_unpaired_seed_is_named():
    a, b = _runs([[0.5], [0.6]], seeds=[0, 1]), _runs([[0.5], [0.6]], seeds=[0, 7])
    with pytest.raises(ValueError, match=r"unpaired seeds: 'srft' has \[1\] that 'full' lacks, 'full' has \[7\]"):
        paired_difference(a, b, "SR", labels=("srft", "full"))


def test_unpaired_sequence_is_named():
    a = _runs([[0.5, 0.6]], sequences=["car", "dog"])
    b = _runs([[0.5, 0.6]], sequences=["car", "cat"])
    with pytest.raises(ValueError, match=r"unpaired sequences: 'a' has \['dog'\] that 'b' lacks, 'b' has \['cat'\]"):
        paired_difference(a, b, "SR")


def test_seeds_of_one_method_on_different_sequences_are_named():
    a = {0: {"car": {"SR": 0.5}}, 1: {"dog": {"SR": 0.5}}}
    with pytest.raises(ValueError, match=r"'a' seed 1 has different sequences from seed 0: missing \['car'\], "
                                         r"extra \['dog'\]"):
        paired_difference(a, a, "SR")


@pytest.mark.parametrize(
    "runs, message",
    [({}, "runs of 'a': no seeds"), ({0: {}}, "'a' seed 0: no sequences"), ([], "expected a mapping seed")],
)
def test_empty_input_is_refused(runs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        paired_difference(runs, _runs([[0.5]]), "SR")
    with pytest.raises(ValueError, match="runs must be a non-empty mapping"):
        summarize({}, "SR")


def test_nan_value_is_named():
    a = _runs([[0.5, 0.6]])
    a[0]["seq1"]["SR"] = float("nan")
    before = copy.deepcopy(a)
    with pytest.raises(ValueError, match=r"'srft' seed 0 sequence 'seq1': SR is nan"):
        paired_difference(a, _runs([[0.5, 0.6]]), "SR", labels=("srft", "full"))
    assert str(a) == str(before)  # the input is left as it was


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match=r"unknown metric 'AUC'; it has \['SR'\]"):
        paired_difference(_runs([[0.5]]), _runs([[0.5]]), "AUC")
    with pytest.raises(ValueError, match="unknown metric 'AUC'"):
        summarize({"m": _runs([[0.5]])}, "AUC")


def test_non_number_and_bad_options_are_named():
    with pytest.raises(TypeError, match=r"SR must be a number, got '0.5'"):
        paired_difference({0: {"s": {"SR": "0.5"}}}, _runs([[0.5]], sequences=["s"]), "SR")
    with pytest.raises(ValueError, match="n_resamples must be a positive integer, got 0"):
        paired_difference(_runs([[0.5]]), _runs([[0.5]]), "SR", n_resamples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 95"):
        paired_difference(_runs([[0.5]]), _runs([[0.5]]), "SR", confidence=95)
    with pytest.raises(ValueError, match=r"cells must be a non-empty \(seeds, sequences\) array, got shape \(3,\)"):
        bootstrap_means(np.zeros(3))


# ---------------------------------------------------------------------------------------------------------------------
# The claim
# ---------------------------------------------------------------------------------------------------------------------
SEQ_EFFECTS = np.random.default_rng(7).normal(0, 0.08, 20)
NOISE = np.random.default_rng(8).normal(0, 0.01, (4, 3, 20))  # per method, 3 seeds, 20 sequences


def _method(level, k):
    return _runs(np.clip(level + SEQ_EFFECTS[None] + NOISE[k], 0, 1))


def _modality(target_levels, retention_levels):
    names = ["srft", "full", "ewc", "lora"]
    target = {n: _method(v, k) for k, (n, v) in enumerate(zip(names, target_levels))}
    retention = {n: _method(v, (k + 1) % 4) for k, (n, v) in enumerate(zip(names, retention_levels))}
    return target, retention


def _claim(cases):
    target = {f"m{i}": c[0] for i, c in enumerate(cases)}
    retention = {f"m{i}": c[1] for i, c in enumerate(cases)}
    return decide_claim(target, retention, n_resamples=2000)


GOOD = ((0.50, 0.50, 0.45, 0.46), (0.60, 0.40, 0.50, 0.45))  # srft, full, ewc, lora: target then retention


def test_claim_passes():
    verdict = _claim([_modality(*GOOD), _modality(*GOOD), _modality((0.40, 0.50, 0.4, 0.4), GOOD[1])])
    assert verdict.passed, str(verdict)
    assert [v.passed for v in verdict.modalities] == [True, True, False]
    assert verdict.modalities[0].target.low < 0 <= verdict.modalities[0].target.high  # "includes 0" suffices
    assert "2 of 3 modalities pass (need 2)" in str(verdict) and "PASSED" in str(verdict)


def test_claim_fails_on_target():
    worse = ((0.42, 0.50, 0.45, 0.46), GOOD[1])
    verdict = _claim([_modality(*GOOD), _modality(*worse), _modality(*worse)])
    assert not verdict.passed
    assert [v.target_ok for v in verdict.modalities] == [True, False, False]
    assert all(v.retention_ok for v in verdict.modalities)
    assert "m1: target SR worse than 'full'" in str(verdict) and "1 of 3 modalities pass" in str(verdict)


def test_claim_fails_on_retention():
    same = (GOOD[0], (0.40, 0.40, 0.30, 0.30))  # retention equal to full: the interval holds 0
    verdict = _claim([_modality(*GOOD), _modality(*same), _modality(*same)])
    assert not verdict.passed
    assert [v.retention_ok for v in verdict.modalities] == [True, False, False]
    assert verdict.modalities[1].retention.low <= 0
    assert "retention SR not better" in str(verdict)


def test_claim_fails_when_dominated():
    t, r = _modality(*GOOD)
    r["lora"] = copy.deepcopy(r["srft"])  # equal retention ...
    t["lora"] = {s: {q: {"SR": v["SR"] + 0.001} for q, v in seqs.items()} for s, seqs in t["srft"].items()}  # > target
    verdict = _claim([_modality(*GOOD), _modality(*GOOD), (t, r)])
    assert [v.passed for v in verdict.modalities] == [True, True, True]
    assert not verdict.passed
    assert verdict.modalities[2].dominated_by == ("lora",)
    assert "dominated on m2 by ['lora']" in str(verdict)


def test_claim_equal_competitor_does_not_dominate():
    t, r = _modality(*GOOD)
    t["ewc"], r["ewc"] = copy.deepcopy(t["srft"]), copy.deepcopy(r["srft"])  # equal on both: not dominated
    verdict = _claim([(t, r), _modality(*GOOD)])
    assert verdict.passed and verdict.modalities[0].dominated_by == ()


def test_claim_names_missing_methods_and_modalities():
    t, r = _modality(*GOOD)
    with pytest.raises(ValueError, match=r"target\['rgbt'\]: no runs for method\(s\) \['lora'\]"):
        decide_claim({"rgbt": {k: v for k, v in t.items() if k != "lora"}}, {"rgbt": r})
    with pytest.raises(ValueError, match=r"retention must have the target's modalities \['rgbt'\], got \['rgbd'\]"):
        decide_claim({"rgbt": t}, {"rgbd": r})


# ---------------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------------
def _table_runs():
    target, retention = _modality(*GOOD)
    for runs, level in ((target, 0.30), (retention, 0.62)):
        runs["start"] = {0: {q: {"SR": level} for q in runs["full"][0]}}  # converted model, step 0, scored once
    return target, retention


def test_compare_methods_rows():
    target, retention = _table_runs()
    for runs in (target, retention):
        for seed in runs.values():
            for scores in seed.values():
                for rec in scores.values():
                    rec.update(PR=rec["SR"] + 0.1, NPR=rec["SR"] + 0.05)
    rows = {r.method: r for r in compare_methods(target, retention, baselines=["start"], n_resamples=500)}
    srft, full, start = rows["srft"], rows["full"], rows["start"]
    assert srft.vs_reference.mean == pytest.approx(srft.target["SR"].mean - full.target["SR"].mean)
    assert srft.best_other == "lora" and srft.best_other_retention == "ewc"  # full and start are not "others"
    assert rows["ewc"].best_other == "srft"
    assert full.vs_reference is None and start.vs_reference is None and start.best_other is None
    assert math.isnan(start.target["SR"].sd) and set(srft.target) == {"SR", "PR", "NPR"}
    table = format_comparison_table(list(rows.values()))
    lines = table.splitlines()
    head = "| method | target SR | target PR | target NPR | retention SR | Δ target SR vs full [95 % CI] |"
    assert lines[0].startswith(head)
    assert len(lines) == 2 + 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert f"| {srft.vs_best_other.format()} vs lora |" in lines[2 + list(rows).index("srft")]
    assert "| start | 30.0 (n/a) |" in table


def test_compare_methods_needs_the_reference():
    target, retention = _table_runs()
    del retention["full"]
    with pytest.raises(ValueError, match=r"retention: no runs for method\(s\) \['full'\]"):
        compare_methods(target, retention, baselines=["start"], metrics=("SR",))
