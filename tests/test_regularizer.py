"""The regularizer: fused prior gradient, grad/loss equivalence, transfer damping, state."""

import copy
import warnings

import pytest
import torch
from engine_helpers import engine_copy, regularized_params, state_tensor
from tolerances import assert_close32
from torch import nn

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.regularizer.transfer import RANK_LEVELS, rank_codes, rank_damping


def prepared(model, batches, **cfg):
    srft = get_srft_model(model, SRFTConfig(**{"target_modules": None, "prior_rank": 3, "total_steps": 8, **cfg}))
    srft.estimate_prior(batches, progress=False)
    return srft


def train(model, batches, steps=6, srft=None, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    if srft is not None:
        srft.attach(opt)
    for i in range(steps):
        x = batches[i % len(batches)]
        out = (srft or model)(x)
        loss = (out - 1.0).pow(2).mean()
        if srft is not None and srft.srft_config.apply == "loss":
            loss = loss + srft.srft_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def test_fused_prior_gradient_equals_autograd(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches)
    with torch.no_grad():
        for p in token_mlp.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    params = regularized_params(srft)
    expected = torch.autograd.grad(srft.prior_penalty(), params)
    engine = engine_copy(srft)
    ws = engine.layout.new_buffer()
    engine.prior_term.gradient_into_(params, ws)
    for name, got, ref in zip(srft.regularized_parameters, engine.layout.views(ws), expected):
        # float32: the fused gradient vs autograd of the penalty, products over widths <= 6 and rank <= 6, 3 deep
        assert_close32(got, ref, reduction_size=6, depth=3, msg=name)


def test_penalty_is_zero_at_anchor_and_grows(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches)
    assert srft.prior_penalty().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        token_mlp.fc1.weight.add_(0.05)
    assert srft.prior_penalty().item() > 0


@pytest.mark.parametrize("transfer_mode", ["value", "rank"])
def test_grad_and_loss_modes_give_the_same_updates(token_mlp, token_batches, transfer_mode):
    a, b = copy.deepcopy(token_mlp), copy.deepcopy(token_mlp)
    srft_a = prepared(a, token_batches, apply="grad", transfer_mode=transfer_mode, lambda_prior=5.0,
                      transfer_statistics="own")
    srft_b = prepared(b, token_batches, apply="loss", transfer_mode=transfer_mode, lambda_prior=5.0,
                      transfer_statistics="own")
    train(a, token_batches, srft=srft_a)
    train(b, token_batches, srft=srft_b)
    assert srft_a.step == srft_b.step == 6
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        # float32, two kernel paths (fused prior gradient vs autograd of the penalty in the loss, reductions over
        # <= 6 features): a gradient's rounding (3 deep), carried through 6 AdamW steps
        assert_close32(pa, pb, reduction_size=6, depth=3 * 6, msg=n)
    # the regularization did something
    plain = copy.deepcopy(token_mlp)
    train(plain, token_batches)
    assert not torch.allclose(plain.fc1.weight, a.fc1.weight)


def test_loss_mode_adds_penalty_to_model_output_loss(token_mlp, token_batches):
    class WithLoss(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return {"loss": self.net(x).pow(2).mean(), "logits": self.net(x)}

    model = WithLoss(token_mlp)
    srft = get_srft_model(model, SRFTConfig(target_modules=["fc1"], prior_rank=2, apply="loss", total_steps=4,
                                            lambda_prior=3.0))
    srft.estimate_prior(token_batches, progress=False)
    with torch.no_grad():
        token_mlp.fc1.weight.add_(0.1)
    x = token_batches[0]
    plain = model(x)["loss"]
    srft.attach(torch.optim.SGD(srft.parameters(), lr=0.1))
    total = srft(x)["loss"]
    torch.testing.assert_close(total, plain + 3.0 * srft.prior_penalty())
    srft.eval()
    torch.testing.assert_close(srft(x)["loss"], plain)  # no penalty outside training


def test_zero_lambdas_are_bit_identical_to_plain_training(token_mlp, token_batches):
    plain, reg = copy.deepcopy(token_mlp), copy.deepcopy(token_mlp)
    train(plain, token_batches)
    srft = prepared(reg, token_batches, lambda_prior=0.0, lambda_transfer=0.0)
    train(reg, token_batches, srft=srft)
    for pa, pb in zip(plain.parameters(), reg.parameters()):
        assert torch.equal(pa, pb)


def transfer_only_step(grad, mode, **cfg):
    p = nn.Parameter(torch.zeros(4))
    net = nn.Module()
    net.p = p
    cfg = {"transfer_beta": 0.0, "lambda_prior": 0.0, **cfg}  # no prior here: lambda_prior > 0 would warn at attach
    config = SRFTConfig(target_modules=["p"], transfer_mode=mode, transfer_statistics="own", kappa_shape="constant",
                        kappa_start=0.0, kappa_end=0.0, **cfg)
    srft = get_srft_model(net, config)
    opt = torch.optim.SGD([p], lr=1.0)
    srft.attach(opt)
    p.grad = grad.clone()
    opt.step()
    return p.detach(), srft


def test_value_mode_damping_matches_hand_computation():
    # v = g^2 = [1, 1, 4, 0], mean 1.5, s = [2/3, 2/3, 8/3, 0], r = clamp(s / 2) = [1/3, 1/3, 1, 0]
    # m = 0.25 + 0.4 r; SGD step -g; damped theta = -g (1 - m)
    theta, _ = transfer_only_step(torch.tensor([1.0, 1.0, 2.0, 0.0]), "value", spikiness_max=2.0)
    m = 0.25 + 0.4 * torch.tensor([1 / 3, 1 / 3, 1.0, 0.0])
    torch.testing.assert_close(theta, -torch.tensor([1.0, 1.0, 2.0, 0.0]) * (1 - m))


def test_rank_mode_damping_matches_hand_computation():
    # v = g^2 = [1, 1, 4, 0.25]; stable ranks: element 3 < 0 < 1 < 2 -> m = [0.3833, 0.5167, 0.65, 0.25]
    g = torch.tensor([1.0, -1.0, 2.0, 0.5])
    theta, _ = transfer_only_step(g, "rank")
    lin = torch.linspace(0.25, 0.65, 4)
    m = torch.empty(4)
    m[torch.argsort(g.pow(2), stable=True)] = lin
    assert m.tolist() == pytest.approx([0.3833333, 0.5166667, 0.65, 0.25], abs=1e-6)
    torch.testing.assert_close(theta, -g * (1 - m))


def test_gather_mapping_reproduces_the_authors_formula():
    # the released code: s = mean of the last two g^2 / max; m = linspace(0.25, 0.65, N)[argsort(s)]
    torch.manual_seed(0)
    g1, g2 = torch.randn(3, 5), torch.randn(3, 5)
    s = (g1.pow(2) + g2.pow(2)) / 2
    s = s / s.max()
    authors = torch.linspace(0.25, 0.65, s.numel())[torch.argsort(s.flatten(), stable=True)].view_as(s)
    ours = rank_damping(s, SRFTConfig(transfer_mode="rank", rank_mapping="gather"))
    assert torch.equal(ours, authors)
    scatter = rank_damping(s, SRFTConfig(transfer_mode="rank"))
    assert not torch.equal(scatter, authors)
    # scatter is monotone in s: the spikiest element is damped most
    assert scatter.flatten()[s.flatten().argmax()] == pytest.approx(0.65)


@pytest.mark.parametrize("mapping", ["scatter", "gather"])
def test_rank_codes_decode_to_rank_damping(mapping):
    """The int16 cache: half the bytes of m, and decoded m within (m_max - m_min) / (2 * RANK_LEVELS) of exact."""
    torch.manual_seed(0)
    v = torch.rand(7, 300)
    cfg = SRFTConfig(transfer_mode="rank", rank_mapping=mapping)
    codes = rank_codes(v, cfg)
    assert codes.dtype == torch.int16 and codes.shape == v.shape and codes.element_size() == 2
    assert int(codes.min()) == 0 and int(codes.max()) == RANK_LEVELS
    decoded = 0.25 + 0.4 * codes.double() / RANK_LEVELS
    exact = rank_damping(v.double(), cfg)
    assert (decoded - exact).abs().max() <= 0.4 / (2 * RANK_LEVELS) + 1e-12
    assert torch.equal(codes.flatten().argsort(stable=True), exact.flatten().argsort(stable=True))


def test_statistics_not_updated_on_non_finite_gradients():
    _, srft = transfer_only_step(torch.tensor([1.0, 1.0, 2.0, 0.0]), "value", transfer_beta=0.5)
    v_before = state_tensor(srft, "transfer.v")
    p = regularized_params(srft)[0]
    opt = torch.optim.SGD([p], lr=0.0)  # only SRFT's statistics move
    srft.attach(opt)
    p.grad = torch.tensor([1.0, float("inf"), 0.0, float("nan")])
    opt.step()
    assert torch.equal(state_tensor(srft, "transfer.v"), v_before)
    p.grad = torch.tensor([2.0, 2.0, 2.0, 2.0])
    opt.step()
    torch.testing.assert_close(state_tensor(srft, "transfer.v"), 0.5 * v_before + 0.5 * 4.0)


def test_optimizer_statistics_reuse_adam_exp_avg_sq(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches)
    opt = train(token_mlp, token_batches, steps=2, srft=srft)
    state = srft.srft_state_dict()
    assert state["statistics"] == "optimizer" and "transfer.v" not in state["tensors"]
    srft.detach()
    engine = engine_copy(srft)
    engine.attach(opt)
    v = engine._statistics_for([0])[0]
    assert v is opt.state[regularized_params(srft)[0]]["exp_avg_sq"]


def saved_rank_codes(state: dict) -> dict:
    """The rank-mode damping codes of an ``srft_state_dict()``, by parameter name."""
    prefix = "transfer.rank_codes."
    return {k[len(prefix):]: t for k, t in state["tensors"].items() if k.startswith(prefix)}


def test_step_counter_and_state_round_trip(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches, transfer_statistics="own", transfer_mode="rank")
    train(token_mlp, token_batches, steps=3, srft=srft)
    state = srft.srft_state_dict()
    assert state["step"] == 3 and srft.kappa == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(3 / 8 * torch.pi))))
    other = prepared(copy.deepcopy(token_mlp), token_batches, transfer_statistics="own", transfer_mode="rank")
    other.load_srft_state_dict(state)
    assert other.step == 3 and torch.equal(state_tensor(other, "transfer.v"), state_tensor(srft, "transfer.v"))
    rank_a, rank_b = (saved_rank_codes(s.srft_state_dict()) for s in (other, srft))
    assert rank_a.keys() == rank_b.keys() and all(torch.equal(rank_a[k], rank_b[k]) for k in rank_a)
    # a state from before the int16 cache (float m) converts to the same codes
    old = {**state, "tensors": {k: v for k, v in state["tensors"].items() if not k.startswith("transfer.rank_codes.")}}
    for name, codes in rank_b.items():
        m = 0.25 + 0.4 * codes.double() / RANK_LEVELS
        old["tensors"][f"transfer.rank_m.{name}"] = m.float()
    third = prepared(copy.deepcopy(token_mlp), token_batches, transfer_statistics="own", transfer_mode="rank")
    third.load_srft_state_dict(old)
    assert all(torch.equal(saved_rank_codes(third.srft_state_dict())[k], rank_b[k]) for k in rank_b)
    bad = {**state, "tensors": {**state["tensors"], next(k for k in state["tensors"] if "rank_codes" in k):
                                torch.zeros(1)}}
    with pytest.raises(ValueError, match="must be an int16 tensor"):
        third.load_srft_state_dict(bad)


def test_warns_once_when_training_without_optimizer(token_mlp, token_batches):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=["fc1"], total_steps=3))
    with pytest.warns(UserWarning, match="attach"):
        srft(token_batches[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        srft(token_batches[0])


def test_attach_checks(token_mlp):
    srft = get_srft_model(token_mlp, SRFTConfig(target_modules=["fc1"], total_steps=3, lambda_prior=0.0))
    with pytest.raises(ValueError, match="not in the optimizer"):
        srft.attach(torch.optim.SGD(token_mlp.fc2.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match="weight_decay"):
        srft.attach(torch.optim.AdamW(token_mlp.parameters(), lr=0.1, weight_decay=0.01))
    no_t = get_srft_model(copy.deepcopy(token_mlp), SRFTConfig(target_modules=["fc1"], lambda_prior=0.0))
    with pytest.raises(ValueError, match="total_steps"):
        no_t.attach(torch.optim.SGD(no_t.parameters(), lr=0.1))
    no_t.attach(torch.optim.SGD(no_t.parameters(), lr=0.1), total_steps=10)
    assert no_t.kappa == 1.0


def test_scaler_skipped_step_changes_nothing(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches, transfer_statistics="own")
    opt = torch.optim.SGD(token_mlp.parameters(), lr=0.1)
    srft.attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    loss = srft(token_batches[0]).pow(2).mean()
    scaler.scale(loss).backward()
    token_mlp.fc1.weight.grad[0, 0] = float("inf")
    v, before = state_tensor(srft, "transfer.v"), [p.detach().clone() for p in token_mlp.parameters()]
    scaler.step(opt)
    scaler.update()
    assert srft.step == 0 and torch.equal(state_tensor(srft, "transfer.v"), v)
    assert all(torch.equal(a, b) for a, b in zip(before, token_mlp.parameters()))


def test_memory_footprint_counts_srft_buffers(token_mlp, token_batches):
    srft = prepared(token_mlp, token_batches)
    train(token_mlp, token_batches, steps=2, srft=srft)
    mem = srft.memory_footprint()
    assert mem["workspace"] == mem["parameters"]  # one flat workspace; Adam's exp_avg_sq reused for v
    assert mem["statistics"] == 0 and mem["rank_damping"] == 0
    assert mem["prior"] > 0


def test_set_prior_refuses_a_raw_prior_and_changes_nothing():
    """``PriorSignificance.normalized`` is enforced: a raw (unnormalized) prior is refused before anything is set;
    the same prior once normalized is used as it is."""
    from srft_peft.significance.prior import DiagonalSignificance, PriorSignificance

    model = nn.Linear(3, 2)
    srft = get_srft_model(model, SRFTConfig(prior_estimator="diagonal", total_steps=4))
    raw = PriorSignificance({t.name: DiagonalSignificance(t.name, torch.full_like(t.param, 4.0))
                             for t in srft.regularized_targets})
    with pytest.raises(ValueError, match=r"not normalized \(normalized=False\); call prior.normalize\(\) first"):
        srft.set_prior(raw)
    assert srft.prior is None
    srft.set_prior(raw.normalize())
    assert srft.prior is raw and raw.normalizer == 4.0
    assert all(torch.equal(e.fisher, torch.ones_like(e.fisher)) for e in srft.prior.entries.values())
