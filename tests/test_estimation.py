"""Prior significance: the hooked K-FAC factors and the diagonal Fisher against brute-force references."""

import pytest
import torch
from tolerances import assert_close32
from torch.func import functional_call, grad, vmap

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.significance.estimation import collect_statistics
from srft_peft.significance.prior import KFACSignificance
from srft_peft.targeting import select_targets


def per_example_loss(model, x):
    return 0.5 * model(x).pow(2).sum()


def test_kfac_factors_equal_brute_force(token_mlp, token_batches):
    # float64 factors against the float64 brute force (float32 ones: tests/test_factor_precision.py)
    cfg = SRFTConfig(target_modules=["fc1", "fc2"], factor_dtype="float64")
    targets = select_targets(token_mlp, cfg.target_modules, None)
    stats = collect_statistics(token_mlp, targets, token_batches, cfg, progress=False)

    # brute force: every example's own loss, its gradient w.r.t. each layer output, every token a sample
    acts = {}
    for name in ("fc1", "fc2"):
        getattr(token_mlp, name).register_forward_hook(lambda m, a, y, n=name: acts.__setitem__(n, (a[0], y)))
    A = {n: 0 for n in acts or ("fc1", "fc2")}
    S = {n: 0 for n in ("fc1", "fc2")}
    tokens = examples = 0
    for batch in token_batches:
        for x in batch:
            token_mlp.zero_grad()
            loss = per_example_loss(token_mlp, x[None])
            ys = [acts[n][1] for n in ("fc1", "fc2")]
            gs = torch.autograd.grad(loss, ys)
            for n, g in zip(("fc1", "fc2"), gs):
                a = acts[n][0].reshape(-1, acts[n][0].shape[-1]).double()
                g = g.reshape(-1, g.shape[-1]).double()
                A[n] = A[n] + a.T @ a
                S[n] = S[n] + g.T @ g
            tokens += x.shape[0]
            examples += 1
    for n in ("fc1", "fc2"):
        got_A, got_S = stats.factors[f"{n}.weight"]
        # the hooks take float32 activations and output gradients (as for any model), batched here and one example at
        # a time there: other kernels. Widths <= 6; a gradient passes about 6 reductions (fc1, LayerNorm, fc2, and
        # back), squared in the factor: depth 12. A wrong factor (a token missed, another scale) is off by percents.
        assert_close32(got_A, A[n] / tokens, reduction_size=6, depth=12)
        assert_close32(got_S, S[n] / examples, reduction_size=6, depth=12)
    assert stats.num_examples == 6 and stats.num_batches == 2 and stats.objective == "output_norm"


def test_diagonal_fisher_equals_torch_func_per_sample(token_mlp, token_batches):
    cfg = SRFTConfig(target_modules=None, prior_estimator="diagonal")
    targets = select_targets(token_mlp, None, None, "diagonal")
    stats = collect_statistics(token_mlp, targets, token_batches, cfg, progress=False)
    params = {k: v.detach() for k, v in token_mlp.named_parameters()}

    def loss(p, x):
        return 0.5 * functional_call(token_mlp, p, (x[None],)).pow(2).sum()

    per_sample = [vmap(grad(loss), in_dims=(None, 0))(params, b) for b in token_batches]
    # every parameter, the free positional one (added to the input) too, has exact per-example gradients
    for name in ("pos", "fc1.weight", "fc1.bias", "norm.weight", "norm.bias", "fc2.weight", "fc2.bias"):
        ref = torch.cat([g[name] for g in per_sample]).double().pow(2).mean(0)
        assert stats.fisher[name].dtype == torch.float64
        # float32 per-example gradients by hooks and by vmap (other kernels), squared: as the K-FAC factors above
        assert_close32(stats.fisher[name], ref, reduction_size=6, depth=12)
        assert stats.sources[name] == "per_example"


def test_model_grads_untouched_and_mode_restored(token_mlp, token_batches):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=None, prior_rank=2))
    token_mlp.train()
    srft.estimate_prior(token_batches, progress=False)
    assert all(p.grad is None for p in token_mlp.parameters())
    assert token_mlp.training


def test_truncation_by_rank_and_energy():
    torch.manual_seed(0)
    X = torch.randn(50, 6)
    A = X.T @ X / 50
    Y = torch.randn(50, 4) * torch.tensor([3.0, 1.0, 0.3, 0.1])
    S = Y.T @ Y / 50
    sig = KFACSignificance.from_factors("w", A, S, rank=2, energy=None)
    assert sig.U.shape == (4, 2) and sig.V.shape == (6, 2) and sig.omega.shape == (2, 2)
    alpha = torch.linalg.eigvalsh(A.double()).flip(0)
    sigma = torch.linalg.eigvalsh(S.double()).flip(0)
    torch.testing.assert_close(sig.omega.double(), torch.outer(sigma[:2], alpha[:2]), rtol=1e-5, atol=1e-8)
    # energy: the fewest directions holding 90 % of each trace
    e = KFACSignificance.from_factors("w", A, S, rank=None, energy=0.9)
    need = lambda ev: int((torch.cumsum(ev, 0) / ev.sum() < 0.9).sum()) + 1  # noqa: E731
    assert e.rank == (need(sigma), need(alpha))
    capped = KFACSignificance.from_factors("w", A, S, rank=1, energy=0.9)
    assert capped.rank == (1, 1)
    # eigenvectors orient: S U = U diag(sigma)
    torch.testing.assert_close(S.double() @ sig.U.double(), sig.U.double() * sigma[:2], rtol=1e-4, atol=1e-6)


def test_normalizer_makes_mean_retained_curvature_one(token_mlp, token_batches):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=None, prior_rank=3))
    prior = srft.estimate_prior(token_batches, progress=False)
    omegas = torch.cat([e.omega.flatten() for e in prior.entries.values() if e.kind == "kfac"])
    assert omegas.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert prior.normalizer > 0


def test_user_loss_fn_and_model_loss_objectives(token_mlp, token_batches):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=["fc1"], prior_rank=2))
    prior = srft.estimate_prior(token_batches, loss_fn=lambda m, b: m(b).mean(), progress=False)
    assert prior.objective == "loss_fn"
    with pytest.raises(ValueError, match="model_loss"):
        get_srft_model(token_mlp, SRFTConfig(target_modules=["fc1"], calibration_objective="model_loss")) \
            .estimate_prior(token_batches, progress=False)
    with pytest.raises(ValueError, match="empty"):
        srft.estimate_prior([], progress=False)


def test_num_batches_limits_calibration(token_mlp, token_batches):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=["fc1"], prior_rank=2))
    prior = srft.estimate_prior(token_batches * 5, num_batches=3, progress=False)
    assert prior.num_batches == 3 and prior.num_examples == 9


def test_factor_token_stride_scales_the_kept_tokens(token_mlp, token_batches):
    """With every token present twice in a row, stride 2 (offset 0 for batch 0, 1 for batch 1) keeps one of each pair
    and scales by 2: the factors equal the exact ones. On distinct tokens stride 3 gives other, same-sized factors."""
    cfg = SRFTConfig(target_modules=["fc1", "fc2"])
    targets = select_targets(token_mlp, cfg.target_modules, None)
    model = type(token_mlp)(tokens=10)
    model.load_state_dict({**token_mlp.state_dict(), "pos": token_mlp.pos.detach().repeat_interleave(2, dim=0)})
    doubled = [x.repeat_interleave(2, dim=1) for x in token_batches]
    model_targets = select_targets(model, cfg.target_modules, None)
    exact = collect_statistics(model, model_targets, doubled, cfg, progress=False)
    strided = collect_statistics(model, model_targets, doubled, SRFTConfig(target_modules=["fc1", "fc2"],
                                                                           factor_token_stride=2), progress=False)
    for name, (A, S) in exact.factors.items():
        # float32 factors summed over 60 token rows (3 x 10 tokens x 2 batches) against 30 kept rows times 2: other
        # summation orders of the same float32 products
        assert_close32(strided.factors[name][0], A, reduction_size=60)
        assert_close32(strided.factors[name][1], S, reduction_size=60)
    third = collect_statistics(token_mlp, targets, token_batches, SRFTConfig(target_modules=["fc1", "fc2"],
                                                                             factor_token_stride=3), progress=False)
    full = collect_statistics(token_mlp, targets, token_batches, cfg, progress=False)
    A3, A1 = third.factors["fc1.weight"][0], full.factors["fc1.weight"][0]
    assert A3.shape == A1.shape and not torch.allclose(A3, A1)
    assert 0.3 < A3.trace() / A1.trace() < 3.0  # same scale: the kept tokens were scaled up
    with pytest.raises(ValueError, match="factor_token_stride must be a positive integer, got 0"):
        SRFTConfig(factor_token_stride=0)
