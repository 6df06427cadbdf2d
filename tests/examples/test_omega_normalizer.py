"""benchmarks/omega_normalizer.py: the candidate normalizations of omega change only the curvatures, and the variant
checkpoints it writes load (and differ from the source exactly as the variant says)."""

from __future__ import annotations

import pytest
import torch
from checkpoint_helpers import make_srft

from benchmarks import omega_normalizer
from srft_peft import load_significance_checkpoint


def curvatures(prior) -> dict[str, torch.Tensor]:
    return {name: e.significance_values().double() for name, e in prior.entries.items()}


@pytest.mark.parametrize("estimator", ["kfac", "diagonal"])
def test_variants_load_and_renormalize_only_the_curvatures(tmp_path, estimator):
    srft = make_srft(estimator)
    srft.save_pretrained(tmp_path / "global")
    source = load_significance_checkpoint(tmp_path / "global").prior
    bound = 0.5 * max(float(w.max()) for w in curvatures(source).values())  # clips something, not everything
    for variant in omega_normalizer.VARIANTS:
        folder = omega_normalizer.write_variant(tmp_path / "global", tmp_path / variant, variant, bound)
        prior = load_significance_checkpoint(folder).prior
        assert prior.normalized and set(prior.entries) == set(source.entries)
        for name, w in curvatures(prior).items():
            w0 = curvatures(source)[name]
            if variant == "global":
                assert torch.equal(w, w0)
            elif variant == "per-tensor":  # each tensor's mean is 1 (float32 storage: rtol from its rounding)
                torch.testing.assert_close(w.mean(), torch.ones((), dtype=torch.float64), rtol=w.numel() * 2**-24,
                                           atol=0)
                torch.testing.assert_close(w, w0 / w0.mean(), rtol=2**-23, atol=0)
            else:
                assert torch.equal(w, w0.clamp(max=bound).float().double())
            if prior.entries[name].kind == "kfac":  # the eigenvectors are the source's, bit for bit
                assert torch.equal(prior.entries[name].U, source.entries[name].U)
                assert torch.equal(prior.entries[name].V, source.entries[name].V)
    clipped = sum(int((w > bound).sum()) for w in curvatures(source).values())
    assert clipped > 0


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of"):
        omega_normalizer.renormalize({}, "per-block", 10.0)


def test_the_rule_adopts_only_a_candidate_ahead_with_its_interval_above_zero():
    def record(target, rgb):
        return {"target": {"SR": target}, "rgb": {"SR": rgb}}

    records = {}
    for m in ("rgbt", "rgbd", "rgbe"):
        for s, shift in ((100, 0.0), (101, 0.01)):
            records[m, s, "global"] = record(0.40 + shift, 0.40)
            records[m, s, "per-tensor"] = record(0.42 + shift, 0.41)  # ahead in every cell
            records[m, s, "bounded"] = record(0.40 + shift + (0.02 if m == "rgbt" else -0.01), 0.40)  # mixed
    _, verdict = omega_normalizer.report(records, ["rgbt", "rgbd", "rgbe"], [100, 101])
    assert verdict["per-tensor"]["adopt"] and verdict["per-tensor"]["interval"][0] > 0
    assert verdict["per-tensor"]["mean_difference"] == pytest.approx(1.5)
    assert not verdict["bounded"]["adopt"]
