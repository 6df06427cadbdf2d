"""K-FAC factors accumulated in float32 (``factor_dtype="float32"``, the default) against float64 accumulation on the
same calibration data: every difference stays within the bound that float32 rounding over the reduction gives
(docs/concepts.md, "Factor precision").

The bound: a factor M = (1/R) sum_r x_r x_r^T over R token rows, computed in float32 (any summation order, FMA or not),
differs from the float64 one entrywise by at most gamma * sqrt(M_ii M_jj), gamma = t u / (1 - t u), u = 2^-24 and t the
number of terms each entry sums (R rows plus a few scalings and the division). So ||dM||_2 <= gamma tr(M) (the error
matrix is bounded by gamma d d^T with d_i = sqrt(M_ii)): each eigenvalue moves by at most gamma tr(M) (Weyl), and the
kept k-dimensional eigenspace turns by sin(theta) <= ||dM|| / (gap_k - ||dM||) (Davis-Kahan), gap_k = lambda_k -
lambda_{k+1}. omega = sigma_i alpha_j / c follows from those.
"""

import torch

from srft_peft import SRFTConfig
from srft_peft.significance.estimation import add_gram_, collect_statistics, symmetrize_
from srft_peft.significance.prior import KFACSignificance, PriorSignificance
from srft_peft.targeting import select_targets

U32 = 2.0**-24  # float32 unit roundoff (eps32 / 2)


def gamma(terms: int) -> float:
    return terms * U32 / (1 - terms * U32)


def largest_principal_sine(X: torch.Tensor, Y: torch.Tensor) -> float:
    """sin of the largest principal angle between span(X) and span(Y) (orthonormal columns, same count):
    ||(I - Y Y^T) X||_2, accurate for small angles (unlike sqrt(1 - cos^2))."""
    X, Y = X.double(), Y.double()
    return float(torch.linalg.matrix_norm(X - Y @ (Y.T @ X), ord=2))


def test_gram_panels_cover_the_whole_product():
    g = torch.Generator().manual_seed(0)
    for n, panel in ((600, 256), (100, 256), (512, 128)):  # partial last panel; one product; exact panels
        x = torch.randn(37, n, generator=g, dtype=torch.float64)
        M = symmetrize_(add_gram_(torch.zeros(n, n, dtype=torch.float64), x, alpha=0.5, panel=panel))
        torch.testing.assert_close(M, 0.5 * x.T @ x, rtol=1e-13, atol=1e-12)
        assert torch.equal(M, M.T)


def test_float32_factors_eigenpairs_and_omega_match_float64_within_the_rounding_bound():
    import timm

    torch.manual_seed(0)  # 32 px, patch 8: 17 tokens; factors 192, 384 and 576 wide (qkv: the panel products)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                              depth=1, mlp_ratio=2).eval()
    batches = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    targets = select_targets(model, None, None)
    rank = 8
    stats, kfac = {}, {}
    for dtype in ("float32", "float64"):
        config = SRFTConfig(prior_rank=rank, factor_dtype=dtype)
        stats[dtype] = collect_statistics(model, targets, batches, config, progress=False)
        kfac[dtype] = {name: KFACSignificance.from_factors(name, A, S, rank, None, solver="eigh")
                       for name, (A, S) in stats[dtype].factors.items()}
    rows = sum(b.shape[0] for b in batches) * 17  # the most token rows any factor sums (the patch embedding: 16)
    g = gamma(rows + 4)  # + the scaling by the stride / B^2, the running sum over calls and batches, the division

    checked_subspaces = 0
    error, spectrum = {}, {}  # (name, factor) -> the bound on ||dM||_2, the float64 eigenvalues
    for name, (A64, S64) in stats["float64"].factors.items():
        A32, S32 = stats["float32"].factors[name]
        assert A32.dtype == torch.float32 and A64.dtype == torch.float64
        for factor, M32, M64, side in (("A", A32, A64, "V"), ("S", S32, S64, "U")):
            d = M64.diagonal().sqrt()
            dM = M32.double() - M64
            assert torch.equal(M32, M32.T), (name, factor)
            assert bool((dM.abs() <= g * torch.outer(d, d)).all()), (name, factor)  # entrywise
            bound = error[name, factor] = g * float(M64.trace())
            ev64 = spectrum[name, factor] = torch.linalg.eigvalsh(M64).flip(0).clamp_min(0)
            ev32 = torch.linalg.eigvalsh(M32.double()).flip(0).clamp_min(0)
            assert float((ev32 - ev64).abs().max()) <= bound + 1e-12 * float(ev64[0]), (name, factor)  # Weyl
            gap = float(ev64[rank - 1] - ev64[rank])
            if gap > 2 * bound:  # Davis-Kahan: the kept subspace, compared by principal angles
                kept32, kept64 = getattr(kfac["float32"][name], side), getattr(kfac["float64"][name], side)
                stored = 4 * U32 * kept64.shape[0] ** 0.5  # U and V are stored in float32
                assert largest_principal_sine(kept32, kept64) <= bound / (gap - bound) + stored, (name, factor)
                checked_subspaces += 1
    assert checked_subspaces >= len(error) // 2  # the angle bound is informative for most factors

    # omega: raw sigma_i alpha_j (float64), then divided by the shared normalizer c (their mean) and stored as float32
    raw_error = {}
    for name, e64 in kfac["float64"].items():
        sigma, alpha = spectrum[name, "S"][:rank], spectrum[name, "A"][:rank]
        eS, eA = error[name, "S"], error[name, "A"]
        raw_error[name] = eS * alpha[None, :] + sigma[:, None] * eA + eS * eA
        difference = (kfac["float32"][name].omega - e64.omega).abs()
        assert bool((difference <= raw_error[name] + 1e-12 * float(e64.omega.max())).all()), name
    p32 = PriorSignificance(dict(kfac["float32"])).normalize()
    p64 = PriorSignificance(dict(kfac["float64"])).normalize()
    dc = sum(float(v.sum()) for v in raw_error.values()) / sum(v.numel() for v in raw_error.values())  # >= |dc|
    for name, e64 in p64.entries.items():
        w32, w64 = p32.entries[name].omega.double(), e64.omega.double()
        allowed = (raw_error[name] + w64 * dc) / p32.normalizer + 2 * U32 * w64  # + the float32 storage
        assert bool(((w32 - w64).abs() <= allowed).all()), name
