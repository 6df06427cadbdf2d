"""Top-k eigenpairs of the Kronecker factors (subspace iteration) against a full float64 eigh."""

import math

import pytest
import torch

from srft_peft import SRFTConfig
from srft_peft.significance.eigen import DEFAULT_TOL, top_eigenpairs
from srft_peft.significance.estimation import collect_statistics, estimate_prior_significance
from srft_peft.significance.prior import KFACSignificance
from srft_peft.targeting import select_targets


def spectrum_matrix(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Q diag(values) Q^T for a random orthogonal Q (float64)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(values.numel(), values.numel(), generator=g, dtype=torch.float64)).Q
    return (Q * values) @ Q.T


def exact(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, vectors = torch.linalg.eigh(M.double())
    return values.flip(0).clamp_min(0), vectors.flip(1)


def captured(exact_vectors: torch.Tensor, vectors: torch.Tensor) -> float:
    """||E^T X||_F^2 / j: the fraction of the exact j-dim subspace E inside span(X) (1 = contained)."""
    return float((exact_vectors.T @ vectors.double()).pow(2).sum()) / exact_vectors.shape[1]


def penalty_gradient(sig: KFACSignificance, delta: torch.Tensor) -> torch.Tensor:
    U, V, omega = sig.U.double(), sig.V.double(), sig.omega.double()
    return U @ (omega * (U.T @ delta @ V)) @ V.T


def structured_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Smooth images: a few oriented sinusoids and Gaussian blobs per channel (not white noise)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = torch.zeros(count, 3, size, size)
    for i in range(count):
        for c in range(3):
            f, theta, phase = torch.rand(3, generator=g) * torch.tensor([6.0, math.pi, 2 * math.pi])
            images[i, c] = torch.sin(f * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
            cx, cy, width = torch.rand(3, generator=g) * torch.tensor([2.0, 2.0, 0.4]) - torch.tensor([1.0, 1.0, -0.1])
            images[i, c] += 2 * torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / width**2)
    return images


def test_subspace_matches_eigh_on_a_decaying_spectrum():
    values = torch.exp(-torch.arange(1100, dtype=torch.float64) / 30) + 1e-4
    M = spectrum_matrix(values)
    top = top_eigenpairs(M, rank=32, energy=None, name="w.S")
    assert top.solver == "subspace"  # n > 1024 and 2k << n: auto does not run the full eigh
    ev, vectors = exact(M)
    assert top.values.shape == (32,) and top.vectors.shape == (1100, 32)
    assert float((top.values - ev[:32]).abs().max()) <= DEFAULT_TOL * float(ev[0])
    assert captured(vectors[:, :32], top.vectors) > 1 - 1e-8
    assert top.trace == pytest.approx(float(values.sum()), rel=1e-12)
    residual = (M @ top.vectors - top.vectors * top.values).norm(dim=0)
    assert float(residual.max()) <= DEFAULT_TOL * float(top.values[0])
    # float32 factors (factor_dtype="float32"): float64 results, accurate to the float32 factor
    top32 = top_eigenpairs(M.float(), rank=32, energy=None, name="w.S")
    assert top32.solver == "subspace" and top32.values.dtype == torch.float64
    assert float((top32.values - ev[:32]).abs().max()) <= 1e-6 * float(ev[0])
    assert captured(vectors[:, :32], top32.vectors) > 1 - 1e-6


def test_subspace_matches_eigh_on_factors_of_a_timm_vit_on_structured_images():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=96, patch_size=16,
                              depth=1).eval()
    config = SRFTConfig(prior_rank=32)
    targets = select_targets(model, None, None)
    batches = [structured_images(8, 96, seed) for seed in range(2)]
    stats = collect_statistics(model, targets, batches, config, progress=False)
    checked = 0
    for name, (A, S) in stats.factors.items():
        for factor, M in (("A", A), ("S", S)):
            top = top_eigenpairs(M, 32, None, "subspace", f"{name}.{factor}")
            assert top.solver == "subspace", (name, factor)  # converged: no eigh fallback on these spectra
            ev, vectors = exact(M)
            k = top.values.numel()
            assert float((top.values - ev[:k]).abs().max()) <= DEFAULT_TOL * float(ev[0]), (name, factor)
            # the well-separated leading directions (eigenvalue >= 2x the first one left out, >= 1e-3 lambda_max)
            j = int(((ev[:k] >= 2 * ev[k]) & (ev[:k] >= 1e-3 * ev[0])).sum())
            if j:
                assert captured(vectors[:, :j], top.vectors) > 1 - 1e-6, (name, factor, j)
                checked += 1
        # the penalty gradient U (omega * U^T dW V) V^T of the prior built either way
        sub = KFACSignificance.from_factors(name, A, S, 32, None, solver="subspace")
        ref = KFACSignificance.from_factors(name, A, S, 32, None, solver="eigh")
        delta = torch.randn(S.shape[0], A.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        # both solvers in float64 on the same factors: they differ by the subspace iteration's tolerance, not rounding
        g_sub, g_ref = penalty_gradient(sub, delta), penalty_gradient(ref, delta)
        assert float((g_sub - g_ref).norm() / g_ref.norm()) < 1e-4, name
        torch.testing.assert_close(sub.omega, ref.omega, rtol=1e-4, atol=1e-5 * float(ref.omega.max()))
        assert sub.retained_energy == pytest.approx(ref.retained_energy, rel=1e-6)
    assert checked >= 6


def test_energy_keeps_the_same_count_as_eigh():
    values = torch.exp(-torch.arange(1100, dtype=torch.float64) / 20)
    M = spectrum_matrix(values, seed=1)
    ev, _ = exact(M)
    for energy, rank, solver in ((0.9, None, "subspace"), (0.9, 40, "subspace"), (0.99999, None, "eigh")):
        top = top_eigenpairs(M, rank=rank, energy=energy, name="w.A")
        needed = int((torch.cumsum(ev, 0) / ev.sum() < energy).sum()) + 1
        assert top.values.numel() == min(needed, rank or needed), energy
        assert top.solver == solver  # 0.9 needs 47 pairs: the block grows from 32; 0.99999 needs ~230: eigh is cheaper
        sig = KFACSignificance.from_factors("w", M, M, rank, energy)
        assert sig.rank == (top.values.numel(),) * 2
        kept = float(ev[: top.values.numel()].sum() / ev.sum())
        assert sig.retained_energy == pytest.approx(kept**2, rel=1e-9)


def test_small_or_wide_requests_use_eigh_and_match_it_exactly():
    M = spectrum_matrix(torch.linspace(3, 0.1, 300), seed=2)
    ev, vectors = exact(M)
    for rank in (8, None):
        top = top_eigenpairs(M, rank=rank, energy=None)
        assert top.solver == "eigh"
        k = rank or 300
        torch.testing.assert_close(top.values, ev[:k], rtol=0, atol=0)
        torch.testing.assert_close(top.vectors, vectors[:, :k], rtol=0, atol=0)


def test_flat_spectrum_that_does_not_converge_falls_back_to_eigh():
    values = 1 + 1e-3 * torch.rand(1100, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    M = spectrum_matrix(values, seed=3)
    top = top_eigenpairs(M, rank=32, energy=None, solver="subspace", name="flat")
    assert top.solver == "eigh"
    torch.testing.assert_close(top.values, exact(M)[0][:32], rtol=0, atol=0)


def test_deterministic_and_seeded_by_name():
    M = spectrum_matrix(torch.exp(-torch.arange(1100, dtype=torch.float64) / 30), seed=5)
    first = top_eigenpairs(M, rank=16, energy=None, name="blocks.0.mlp.fc1.weight.S")
    again = top_eigenpairs(M, rank=16, energy=None, name="blocks.0.mlp.fc1.weight.S")
    assert torch.equal(first.values, again.values) and torch.equal(first.vectors, again.vectors)


def test_bad_factors_and_solver_raise_clear_errors():
    with pytest.raises(ValueError, match=r"eigen_solver must be one of .* got 'lanczos'"):
        top_eigenpairs(torch.eye(3), 1, None, solver="lanczos")
    with pytest.raises(ValueError, match=r"factor 'fc.A' must be a square matrix, got shape \(3, 2\)"):
        top_eigenpairs(torch.ones(3, 2), 1, None, name="fc.A")
    bad = torch.eye(3)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"factor 'fc.S' has non-finite entries"):
        top_eigenpairs(bad, 1, None, name="fc.S")
    with pytest.raises(ValueError, match=r"eigen_solver must be one of .* got 'lanczos'"):
        SRFTConfig(eigen_solver="lanczos")


def test_estimate_prior_uses_the_configured_solver():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(40, 1100), torch.nn.Tanh(), torch.nn.Linear(1100, 30))
    targets = select_targets(net, ["0"], None)
    batches = [torch.randn(64, 40, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    priors = {solver: estimate_prior_significance(net, targets, batches, SRFTConfig(target_modules=["0"], prior_rank=8,
                                                                                     eigen_solver=solver),
                                                  progress=False)
              for solver in ("eigh", "subspace")}
    sub, ref = (priors[s].entries["0.weight"] for s in ("subspace", "eigh"))
    assert not torch.equal(sub.U, ref.U)  # a different computation reached from_factors ...
    delta = torch.randn(1100, 40, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    g_sub, g_ref = penalty_gradient(sub, delta), penalty_gradient(ref, delta)
    assert float((g_sub - g_ref).norm() / g_ref.norm()) < 1e-4  # ... with the same prior up to the tolerance
    assert priors["subspace"].normalizer == pytest.approx(priors["eigh"].normalizer, rel=1e-6)
