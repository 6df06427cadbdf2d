"""The float32 tolerances of tests/tolerances.py: sound for real summation orders, accepting the differences measured
on another CPU, and still rejecting a wrong value."""

import pytest
import torch
from tolerances import EPS32, assert_close32, float32_rtol


@pytest.mark.parametrize("n", [7, 192, 768, 4096])
def test_float32_sums_in_other_orders_stay_inside_the_bound(n):
    """Sums of n float32 terms in four orders (vectorized, blocked, sequential, as a matmul) differ from the float64
    sum by less than half of float32_rtol(n) (one side) times sum(|terms|)."""
    g = torch.Generator().manual_seed(n)
    terms = torch.randn(64, n, generator=g) * torch.rand(64, n, generator=g).pow(4) * 10
    exact = terms.double().sum(1)
    scale = terms.double().abs().sum(1)
    orders = [terms.sum(1), terms.reshape(64, -1, 8 if n % 8 == 0 else n).sum(2).sum(1), terms.cumsum(1)[:, -1],
              terms @ torch.ones(n)]
    for got in orders:
        assert bool(((got.double() - exact).abs() <= float32_rtol(n) / 2 * scale).all())


def test_the_other_cpu_vit_gradient_difference_is_accepted():
    """Another CPU: 2 of 3264 elements of the timm-ViT pos_embed / cls_token Fisher (float32 gradients, squared, vs a
    one-example float32 reference) differed by 1.4e-5 relative, against rtol=1e-5. Widths up to 768, about 9 chained
    matmuls through two blocks and the head, then a square: reduction_size=768, depth=18 accepts it; 1e-5 did not."""
    expected = torch.rand(3264, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    measured = expected.clone()
    measured[[17, 2011]] *= 1 + 1.4e-5
    with pytest.raises(AssertionError):
        torch.testing.assert_close(measured, expected, rtol=1e-5, atol=1e-12)  # the old comparison
    assert_close32(measured, expected, reduction_size=768, depth=18)
    wrong = expected.clone()
    wrong[17] *= 1.01  # a real error (a missing term, a wrong scale) is orders of magnitude above rounding
    with pytest.raises(AssertionError):
        assert_close32(wrong, expected, reduction_size=768, depth=18)


def test_cancelling_elements_are_judged_against_the_scale_of_the_terms():
    """An element near zero (its terms cancel) may differ by the bound times the tensor's scale, not its own."""
    expected = torch.tensor([1.0, -2.0, 3e-7])
    assert_close32(expected + torch.tensor([0.0, 0.0, 2 * EPS32]), expected, reduction_size=4)
    with pytest.raises(AssertionError):
        assert_close32(expected + torch.tensor([0.0, 0.0, 1e-3]), expected, reduction_size=4)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="reduction_size and depth must be >= 1, got 0, 1"):
        float32_rtol(0)
