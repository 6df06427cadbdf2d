"""Prior statistics conventions (docs/concepts.md): shared parameters, folded batches, grouped convolutions, the
positional-embedding / class-token estimator, float64 normalization, the value-mode sparsity formula, and non-finite
or malformed calibration input (a clear error, nothing set)."""

import math

import pytest
import torch
from tolerances import assert_close32, float32_rtol
from torch import nn
from torch.func import functional_call, grad, vmap

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.regularizer.transfer import RANK_LEVELS, TransferTerm, hoyer_sparsity, rank_damping
from srft_peft.significance.estimation import collect_statistics
from srft_peft.significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance
from srft_peft.targeting import select_targets


def output_norm(out: torch.Tensor) -> torch.Tensor:
    return 0.5 * out.pow(2).sum()


def per_example_sq_mean(model: nn.Module, batches: list, names: list[str], call=None) -> dict[str, torch.Tensor]:
    """E_n[(d l_n / d theta)^2] in float64 from torch.func per-sample gradients (the definition)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    call = call or (lambda p, x: functional_call(model, p, (x[None],)))
    per_sample = [vmap(grad(lambda p, x: output_norm(call(p, x))), in_dims=(None, 0))(params, b) for b in batches]
    return {n: torch.cat([g[n] for g in per_sample]).double().pow(2).mean(0) for n in names}


# --- 1. a module used k times per forward ---------------------------------------------------------------------------
class SharedEmbed(nn.Module):
    """A tracker-like trunk: one ``embed`` Linear on template and search tokens (``separate=True``: two copies)."""

    def __init__(self, separate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(4, 6)
        self.mix = nn.Linear(6, 6)
        self.embed_x = nn.Linear(4, 6) if separate else None
        if separate:
            self.embed_x.load_state_dict(self.embed.state_dict())

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.embed(z), (self.embed_x or self.embed)(x)], dim=1)
        return self.mix(torch.tanh(tokens))


def shared_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [{"z": torch.randn(B, 2, 4, generator=g), "x": torch.randn(B, 5, 4, generator=g)} for B in (3, 2)]


def test_shared_module_factors_are_the_sum_over_uses():
    """S of a module called twice = S of two separate copies summed (not their mean); A = the mean over all rows."""
    shared, separate = SharedEmbed(), SharedEmbed(separate=True)
    cfg = SRFTConfig(target_modules=["embed", "embed_x"])
    s = collect_statistics(shared, select_targets(shared, ["embed"], None), shared_batches(), cfg, progress=False)
    r = collect_statistics(separate, select_targets(separate, cfg.target_modules, None), shared_batches(), cfg,
                           progress=False)
    A, S = s.factors["embed.weight"]
    (Az, Sz), (Ax, Sx) = r.factors["embed.weight"], r.factors["embed_x.weight"]
    # float32 factors summed over 5 examples x 7 rows, by other kernels on the two sides
    assert_close32(S, Sz + Sx, reduction_size=35)
    assert_close32(A, (2 * Az + 5 * Ax) / 7, reduction_size=35)  # 2 template, 5 search rows each
    assert s.num_examples == 5


def test_shared_module_diagonal_fisher_squares_the_summed_per_example_gradient():
    model = SharedEmbed()
    cfg = SRFTConfig(target_modules=["embed"], prior_estimator="diagonal")
    stats = collect_statistics(model, select_targets(model, ["embed"], None, "diagonal"), shared_batches(), cfg,
                               progress=False)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per_sample = [vmap(grad(lambda p, z, x: output_norm(functional_call(model, p, (z[None], x[None])))),
                       in_dims=(None, 0, 0))(params, b["z"], b["x"]) for b in shared_batches()]
    for name in ("embed.weight", "embed.bias"):
        ref = torch.cat([g[name] for g in per_sample]).double().pow(2).mean(0)
        # float32 per-example gradients: back through mix (6 wide), summed over 7 tokens, then squared
        assert_close32(stats.fisher[name], ref, reduction_size=7, depth=4)
        assert stats.sources[name] == "per_example"


# --- 2. folded batches -----------------------------------------------------------------------------------------------
class Windowed(nn.Module):
    """``lin`` sees the batch folded into windows of 2 tokens, (B * 3, 2, C), like windowed attention (``fold=False``:
    the same computation on (B, 6, C))."""

    def __init__(self, fold: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fold = fold
        self.lin = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        h = self.lin(x.reshape(B * 3, 2, 4)).reshape(B, 6, 5) if self.fold else self.lin(x)
        return self.out(torch.tanh(h))


def test_folded_batch_counts_examples_from_the_input_batch():
    batches = [torch.randn(4, 6, 4, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    for estimator in ("kfac", "diagonal"):
        cfg = SRFTConfig(target_modules=["lin"], prior_estimator=estimator)
        got, ref = (collect_statistics(m, select_targets(m, ["lin"], None, estimator), batches, cfg, progress=False)
                    for m in (Windowed(), Windowed(fold=False)))
        assert got.num_examples == ref.num_examples == 8
        for name in ref.factors:
            for x, y in zip(got.factors[name], ref.factors[name]):
                assert_close32(x, y, reduction_size=48)  # float32 factors over 8 examples x 6 tokens
        for name in ref.fisher:
            # float32 per-example gradients: back through out (5 wide), summed over 6 tokens, then squared
            assert_close32(got.fisher[name], ref.fisher[name], reduction_size=6, depth=4)
            assert got.sources[name] == "per_example"
    exact = per_example_sq_mean(Windowed(fold=False), batches, ["lin.weight", "lin.bias"])
    assert_close32(got.fisher["lin.bias"], exact["lin.bias"], reduction_size=6, depth=4)


class SeqFirst(nn.Module):
    """``lin`` sees (T, B, C) with T = 5 not a multiple of B: rows cannot be attributed to examples."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.lin = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.transpose(0, 1)).transpose(0, 1)


def test_unattributable_rows_fall_back_to_the_per_batch_estimator():
    model = SeqFirst()
    batches = [torch.randn(B, 5, 4, generator=torch.Generator().manual_seed(B)) for B in (2, 3)]
    stats = collect_statistics(model, select_targets(model, ["lin"], None), batches, SRFTConfig(target_modules=["lin"]),
                               progress=False)
    assert stats.sources["lin.bias"] == "per_batch"
    # B * (batch gradient)^2 per batch, averaged over batches weighted by their size
    total = 0
    for b in batches:
        g = torch.autograd.grad(output_norm(model(b)) / b.shape[0], model.lin.bias)[0].double()
        total = total + b.shape[0] * (b.shape[0] * g.pow(2))
    assert_close32(stats.fisher["lin.bias"], total / 5, reduction_size=5, depth=2)  # float32 sums of 5 rows, squared


# --- 3. grouped and depthwise Conv2d ---------------------------------------------------------------------------------
class GroupedConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.head = nn.Linear(6 * 3 * 3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.depthwise(torch.tanh(self.grouped(x)))).flatten(1))


def test_grouped_and_depthwise_conv_get_the_exact_per_example_fisher():
    model = GroupedConvs()
    batches = [torch.randn(3, 4, 6, 6, generator=torch.Generator().manual_seed(5))]
    srft = get_srft_model(model, SRFTConfig(target_modules=["grouped", "depthwise"], prior_rank=2))
    prior = srft.estimate_prior(batches, progress=False)
    names = ["grouped.weight", "grouped.bias", "depthwise.weight", "depthwise.bias"]
    exact = per_example_sq_mean(model, batches, names)
    for name in names:
        entry = prior.entries[name]
        assert entry.kind == "diagonal" and entry.source == "per_example"
        # float32 per-example gradients: back through head (54) and two convs (3 x 3 x 2 taps, 3 x 3 positions), squared
        assert_close32(entry.fisher.double() * prior.normalizer, exact[name], reduction_size=54, depth=6)


# --- 5. positional embeddings and class tokens -----------------------------------------------------------------------
class TokenTrunk(nn.Module):
    """ViT-like: patch tokens, a class token (expanded over the batch) and a positional embedding added to all."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(6)
        self.proj = nn.Linear(4, 5)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 5))
        self.pos_embed = nn.Parameter(0.5 * torch.randn(1, 4, 5))
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.proj(x)], dim=1) + self.pos_embed
        return self.out(torch.tanh(tokens)).mean(1) + 1.0  # a non-zero mean gradient: per-batch estimates are biased


@pytest.mark.parametrize("batch_size", [2, 8])
def test_pos_embed_and_cls_token_fisher_is_per_example_at_any_batch_size(batch_size):
    model = TokenTrunk()
    data = torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(7))
    batches = list(data.split(batch_size))
    cfg = SRFTConfig(target_modules=None)
    stats = collect_statistics(model, select_targets(model, None, None), batches, cfg, progress=False)
    exact = per_example_sq_mean(model, batches, ["pos_embed", "cls_token"])
    for name in ("pos_embed", "cls_token"):
        assert stats.sources[name] == "per_example"
        # float32 per-example gradients: back through out (2 wide) and the mean over 4 tokens, squared
        assert_close32(stats.fisher[name], exact[name], reduction_size=4, depth=4)


def test_timm_vit_pos_embed_and_cls_token_are_per_example(tiny_vit):
    """In float64 (model and data): the batched path and the one-example reference run different kernels, which in
    float32 differed by 1.4e-5 relative on another CPU (tests/test_tolerances.py)."""
    model = tiny_vit().double()
    batches = [torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8), dtype=torch.float64)]
    stats = collect_statistics(model, select_targets(model, ["pos_embed", "cls_token"], None), batches,
                               SRFTConfig(target_modules=["pos_embed", "cls_token"]), progress=False)
    for name in ("pos_embed", "cls_token"):
        p = dict(model.named_parameters())[name]
        ref = sum(torch.autograd.grad(output_norm(model(x[None])), p)[0].pow(2) for x in batches[0]) / 3
        assert stats.sources[name] == "per_example" and ref.dtype == torch.float64
        # the estimator rounds each float64 per-example gradient to float32 once, no sum: one rounding, squared
        assert_close32(stats.fisher[name], ref, reduction_size=1, depth=2)


# --- 4. normalization in float64 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e22, 1e-27])
def test_normalization_survives_curvature_outside_float32(scale):
    """sigma * alpha = 1e44 (inf in float32) or 1e-54 (0 in float32): c = the mean 7/3 (in units of sigma * alpha)
    and the normalized omega 3/7, 15/7, the diagonal entry 3/7, all finite float32."""
    eye = lambda n: torch.eye(n, dtype=torch.float64) * scale  # noqa: E731  (factors are float64)
    one = KFACSignificance.from_factors("a", eye(2), eye(1), rank=None, energy=None)
    two = KFACSignificance.from_factors("b", eye(1), 5 * eye(1), rank=None, energy=None)
    bias = DiagonalSignificance("c", torch.tensor([scale * scale], dtype=torch.float64))
    prior = PriorSignificance({"a": one, "b": two, "c": bias}).normalize()
    assert prior.normalizer == pytest.approx(scale * scale * 7 / 3, rel=1e-12)
    # computed in float64, rounded once to float32 on each side
    assert_close32(one.omega, torch.full((1, 2), 3 / 7), reduction_size=1)
    assert_close32(two.omega, torch.full((1, 1), 15 / 7), reduction_size=1)
    assert_close32(bias.fisher, torch.tensor([3 / 7]), reduction_size=1)
    assert one.omega.dtype == bias.fisher.dtype == torch.float32


# --- 6. value-mode sparsity modulation -------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["value", "rank"])
def test_sparsity_modulates_r_after_the_clamp(mode):
    """m = m_min + (m_max - m_min) * r * H^gamma with r = min(s / s_max, 1) ('value') or the normalized rank."""
    cfg = SRFTConfig(transfer_mode=mode, sparsity_gamma=0.7, spikiness_max=2.0)
    v = [torch.tensor([0.1, 0.2, 9.0, 0.4, 0.05]), torch.tensor([[1.0, 1.0], [3.0, 0.5]])]
    out = [torch.empty_like(t) for t in v]
    TransferTerm(cfg, v).damping_into_([0, 1], v, out, step=0, gamma=0.5)
    h = hoyer_sparsity(v, [torch.empty_like(t) for t in v]).pow(0.7)
    for t, got, hi in zip(v, out, h):
        if mode == "value":
            r = (t / t.mean() / 2.0).clamp(max=1.0)
        else:
            r = (rank_damping(t, cfg) - 0.25) / 0.4
        want = 0.5 * (0.25 + 0.4 * r * hi)
        if mode == "value":  # float32 on both sides: a mean and the Hoyer sums over <= 5 elements, a few ops deep
            assert_close32(got, want, reduction_size=5, depth=4)
        else:  # int16 rank codes: within half a level, (m_max - m_min) / (2 * RANK_LEVELS), times gamma = 0.5
            rtol = float32_rtol(5, depth=4)
            torch.testing.assert_close(got, want, rtol=rtol, atol=0.5 * 0.4 / (2 * RANK_LEVELS) + rtol)
        assert bool(((got >= 0.5 * 0.25 - 1e-6) & (got <= 0.5 * 0.65 + 1e-6)).all())


# --- 7. non-finite or malformed calibration: a clear error, nothing set -----------------------------------------------
def snapshot(srft) -> dict[str, torch.Tensor]:
    prior = srft.prior
    state = {k: v.clone() for k, v in prior.tensors().items()} if prior is not None else {}
    return {**state, **{f"w.{k}": v.detach().clone() for k, v in srft.base_model.named_parameters()}}


def assert_unchanged(srft, before: dict[str, torch.Tensor], prior_before) -> None:
    assert srft.prior is prior_before
    after = snapshot(srft)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.fixture(params=["no prior", "existing prior"])
def srft(request, token_mlp, token_batches):
    model = get_srft_model(token_mlp, SRFTConfig(target_modules=None, prior_rank=2))
    if request.param == "existing prior":
        model.estimate_prior(token_batches, progress=False)
    return model


def nan_pixel(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    bad = batches[1].clone()
    bad[0, 2, 1] = float("nan")
    return [batches[0], bad]


BAD_INPUTS = {
    "nan batch": (lambda b: nan_pixel(b), None, ValueError, "objective of batch 1 is nan"),
    "nan loss": (lambda b: b, lambda m, x: m(x).mean() * float("nan"), ValueError, "objective of batch 0 is nan"),
    "inf loss": (lambda b: b, lambda m, x: m(x).pow(2).mean() + float("inf"), ValueError,
                 "objective of batch 0 is inf"),
    "python float loss": (lambda b: b, lambda m, x: float(m(x).mean().detach()), TypeError,
                          "objective of batch 0 must be a floating-point scalar tensor, got float"),
    "detached loss": (lambda b: b, lambda m, x: m(x).detach().mean(), ValueError,
                      "objective of batch 0 does not depend on any parameter"),
    "integer loss": (lambda b: b, lambda m, x: torch.tensor(3), TypeError, "got tensor of torch.int64"),
    "string batch": (lambda b: [b[0], "images/0001.jpg"], None, TypeError,
                     "number of examples of calibration batch 1: .* got str"),
    "0-dim batch": (lambda b: [torch.tensor(1.0)], None, TypeError, r"batch 0: .* got tensor of shape \(\)"),
    "nan gradient, finite loss": (lambda b: nan_pixel(b), lambda m, x: torch.nan_to_num(m(x)).pow(2).mean(),
                                  ValueError, r"calibration batch 1 makes the statistics of \[.*\] non-finite"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_calibration_raises_naming_the_batch_and_sets_nothing(srft, token_batches, case):
    make_batches, loss_fn, error, message = BAD_INPUTS[case]
    prior_before, before = srft.prior, snapshot(srft)
    with pytest.raises(error, match=message):
        srft.estimate_prior(make_batches(token_batches), loss_fn=loss_fn, progress=False)
    assert_unchanged(srft, before, prior_before)


def test_non_finite_significance_is_rejected_before_normalizing():
    good = DiagonalSignificance("a", torch.tensor([1.0, 2.0], dtype=torch.float64))
    bad = DiagonalSignificance("b", torch.tensor([1.0, math.inf], dtype=torch.float64))
    prior = PriorSignificance({"a": good, "b": bad})
    with pytest.raises(ValueError, match=r"prior significance of \['b'\] is not finite"):
        prior.normalize()
    assert not prior.normalized and prior.normalizer == 1.0
    assert good.fisher.tolist() == [1.0, 2.0] and good.fisher.dtype == torch.float64


def test_tracker_shared_patch_embed_and_pos_embeds_match_per_example_gradients():
    """The tracker runs ``patch_embed`` on template and search and adds ``pos_embed_z``/``pos_embed_x``: the Fisher of
    each is the mean over examples of the squared per-example gradient (summed over both uses for the patch embed)."""
    from srft_peft.tracking import OSTrackRGBX, TrackerConfig

    torch.manual_seed(0)
    # float64 (model and data): the batched path and the one-example reference run different kernels
    model = OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64)).eval().double()
    g = torch.Generator().manual_seed(9)
    batch = {"template": torch.randn(3, 3, 32, 32, generator=g, dtype=torch.float64),
             "search": torch.randn(3, 3, 64, 64, generator=g, dtype=torch.float64)}

    def objective(m, b):
        return 0.5 * m(b["template"], b["search"]).pred_boxes.pow(2).sum(1).mean()

    names = ["backbone.patch_embed.proj.bias", "backbone.patch_embed.proj.weight", "backbone.pos_embed_z",
             "backbone.pos_embed_x"]
    cfg = SRFTConfig(target_modules=names, prior_estimator="diagonal")
    stats = collect_statistics(model, select_targets(model, names, None, "diagonal"), [batch], cfg, loss_fn=objective,
                               progress=False)
    params = dict(model.named_parameters())
    for name in names:
        one = [{k: v[n:n + 1] for k, v in batch.items()} for n in range(3)]
        ref = sum(torch.autograd.grad(objective(model, b), params[name])[0].pow(2) for b in one) / 3
        assert stats.sources[name] == "per_example" and ref.dtype == torch.float64
        # the estimator rounds the float64 output gradients to float32 and sums them over the patch embedding's
        # positions (16 template + 64 search) in float32, then squares
        assert_close32(stats.fisher[name], ref, reduction_size=80, depth=2)
