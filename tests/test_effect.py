"""The claim in miniature: on a shifted task, SRFT keeps the weights closer to theta0 where the prior says they matter,
and keeps more of the old skill than plain fine-tuning."""

import copy

import torch
from torch import nn

from srft_peft import SRFTConfig, get_srft_model


def make_task(seed, shift, base_seed=1, change=0.5):
    """y = tanh(W x): the new task keeps most of the old W and moves the inputs."""
    W = torch.randn(8, 16, generator=torch.Generator().manual_seed(base_seed))
    g = torch.Generator().manual_seed(seed)
    W = W + change * torch.randn(8, 16, generator=g) if seed != base_seed else W

    def sample(n):
        x = torch.randn(n, 16, generator=g) + shift
        return x, torch.tanh(x @ W.T)
    return sample


def fit(model, sample, steps, lr, srft=None):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if srft is not None:
        srft.attach(opt, total_steps=steps)
    for _ in range(steps):
        x, y = sample(64)
        loss = (model(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def mse(model, sample):
    torch.manual_seed(123)
    with torch.no_grad():
        x, y = sample(512)
        return (model(x) - y).pow(2).mean().item()


def test_srft_preserves_high_significance_directions_and_old_skill():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
    old, new = make_task(1, 0.0), make_task(2, 0.5)
    fit(net, old, 300, 1e-2)
    plain, reg = copy.deepcopy(net), copy.deepcopy(net)

    srft = get_srft_model(reg, SRFTConfig(target_modules=None, prior_rank=8, lambda_prior=5.0, lambda_transfer=0.5))
    calib = [old(64) for _ in range(8)]
    srft.estimate_prior(calib, loss_fn=lambda m, b: (m(b[0]) - b[1]).pow(2).mean(), progress=False)
    fit(plain, new, 150, 1e-2)
    fit(reg, new, 150, 1e-2, srft=srft)

    # the same significance-weighted distance, measured on both runs
    probe = get_srft_model(copy.deepcopy(net), SRFTConfig(target_modules=None, prior_rank=8))
    probe.set_prior(srft.prior)
    def weighted_distance(model):
        with torch.no_grad():
            for p, q in zip(probe.get_base_model().parameters(), model.parameters()):
                p.copy_(q)
        return probe.prior_penalty().item()

    d_plain, d_srft = weighted_distance(plain), weighted_distance(reg)
    assert d_srft < 0.5 * d_plain, (d_srft, d_plain)
    assert mse(reg, old) < mse(plain, old)
    assert mse(reg, new) < 0.25 * mse(net, new)  # and still learns most of the new task
