"""The benchmark baselines compute what they claim, so that the cost comparison is apples to apples."""

import copy

import pytest
import torch
from engine_helpers import engine_copy, regularized_params
from tolerances import adam_trajectory_tolerance, assert_close32
from torch import nn

from benchmarks.baselines import AuthorsStep, EWCLoss
from srft_peft import SRFTConfig, get_srft_model


def test_authors_step_matches_hand_computation():
    p = nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([p], lr=1.0)
    step = AuthorsStep([p])
    step.attach(opt)
    lin = [0.25, 0.25 + 0.4 / 3, 0.25 + 0.8 / 3, 0.65]

    # step 1: g^2 = [1, 4, 0.25, 9] -> v = g^2 / 9, argsort = [2, 0, 1, 3], m = lin[argsort] (the released gather)
    g1 = torch.tensor([1.0, -2.0, 0.5, 3.0])
    p.grad = g1.clone()
    opt.step()
    m1 = torch.tensor([lin[2], lin[0], lin[1], lin[3]])
    expected1 = -g1 * (1 - m1)  # SGD moves to -g1 from 0; the damping takes back m1 of that move
    # elementwise float32 on both sides, no reduction: a few roundings apart (the step's ops vs the expression's)
    assert_close32(p.detach(), expected1, reduction_size=1, depth=3)

    # step 2: v = ([1, 4, 0.25, 9] + [0.25, 1, 2.25, 4]) / 2 = [0.625, 2.5, 1.25, 6.5] -> argsort = [0, 2, 1, 3]
    g2 = torch.tensor([0.5, -1.0, 1.5, 2.0])
    p.grad = g2.clone()
    opt.step()
    m2 = torch.tensor([lin[0], lin[2], lin[1], lin[3]])
    assert_close32(p.detach(), expected1 - g2 * (1 - m2), reduction_size=1, depth=3)
    assert step.memory_bytes() == 2 * 4 * 4

    step.detach()
    before = p.detach().clone()
    p.grad = g2.clone()
    opt.step()
    assert_close32(p.detach(), before - g2, reduction_size=1)  # detached: plain SGD


def test_authors_step_skips_parameters_without_gradient():
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a, b], lr=0.5)
    AuthorsStep([a, b]).attach(opt)
    a.grad = torch.tensor([1.0, 2.0, 3.0])
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2))
    assert (a.detach() < 1).all()


def diagonal_srft(model, batches, lam, **cfg):
    srft = get_srft_model(model, SRFTConfig(prior_estimator="diagonal", lambda_prior=lam, total_steps=10, **cfg))
    srft.estimate_prior(batches, progress=False)
    params = regularized_params(srft)
    fisher = [srft.prior.entries[n].fisher for n in srft.regularized_parameters]
    return srft, params, fisher


def test_ewc_loss_equals_srft_diagonal_penalty(token_mlp, token_batches):
    srft, params, fisher = diagonal_srft(token_mlp, token_batches, lam=3.0)
    ewc = EWCLoss(params, fisher, lam=3.0)
    assert ewc().item() == 0.0
    with torch.no_grad():
        for p in token_mlp.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    # two float32 sums of fisher * d^2 over every parameter element (another order each), the square counts twice
    assert_close32(ewc(), 3.0 * srft.prior_penalty(), reduction_size=sum(p.numel() for p in params), depth=2)
    # and its autograd gradient is SRFT's fused prior gradient
    expected = torch.autograd.grad(ewc(), params)
    engine = engine_copy(srft)
    ws = engine.layout.new_buffer()
    engine.prior_term.gradient_into_(params, ws)
    for got, ref in zip(engine.layout.views(ws), expected):
        assert_close32(3.0 * got, ref, reduction_size=1, depth=3)  # elementwise lambda * fisher * d, no reduction
    assert ewc.memory_bytes() == 2 * sum(p.numel() * 4 for p in params)


def test_ewc_training_equals_srft_prior_only_training(token_mlp, token_batches):
    """EWC in the loss and SRFT's prior term (kappa = 1, no transfer term) give the same updates."""
    # A float64 model: the task gradients agree to float64 rounding. SRFT computes its prior gradient in its float32
    # workspace (elementwise lambda * F * (p - p0): a few roundings, float32_rtol(1, depth=3) of it), EWC in float64;
    # 5 Adam steps of lr 1e-2. A wrong prior term moves each step by up to lr, five orders above this tolerance.
    token_mlp.double()
    token_batches = [x.double() for x in token_batches]
    a, b = copy.deepcopy(token_mlp), copy.deepcopy(token_mlp)
    srft, _, fisher = diagonal_srft(a, token_batches, lam=5.0, kappa_shape="constant", lambda_transfer=0.0)
    ewc = EWCLoss([dict(b.named_parameters())[n] for n in srft.regularized_parameters], fisher, lam=5.0)

    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    srft.attach(opt_a)
    for i in range(5):
        x = token_batches[i % len(token_batches)]
        for model, opt, extra in ((srft, opt_a, None), (b, opt_b, ewc)):
            loss = (model(x) - 1.0).pow(2).mean()
            if extra is not None:
                loss = loss + extra()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, **adam_trajectory_tolerance(1, depth=3, steps=5, lr=1e-2), msg=n)
    assert ewc().item() > 0


@pytest.mark.parametrize("bad", [1, 3])
def test_ewc_checks_lengths(bad):
    with pytest.raises(ValueError):
        EWCLoss([torch.zeros(2)] * 2, [torch.zeros(2)] * bad)
