"""`prior_application`: the gradient, decoupled and proximal modes against a brute-force float64 reference written from
the formulas (explicit Kronecker matrices, the explicit inverse (I + eta lambda_p F)^-1), their order with the transfer
damping, and their bookkeeping (accumulation, skipped steps, param groups, bf16, resume, errors)."""

from __future__ import annotations

import copy
from typing import Optional

import pytest
import torch
from engine_helpers import regularized_params
from tolerances import adam_trajectory_tolerance
from torch import nn

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.schedule import coefficients
from srft_peft.significance import KFACSignificance

MODES = ("gradient", "decoupled", "proximal")
EPS32 = torch.finfo(torch.float32).eps


class TwinMLP(nn.Module):
    """Two same-shaped Linear layers (one K-FAC group: one batched matmul) around a LayerNorm, plus a free parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(5, 4) * 0.1)
        self.fc1 = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.norm(self.fc1(x + self.pos))))


def batches(dtype: torch.dtype = torch.float64, n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(3, 5, 4, generator=g).to(dtype) for _ in range(n)]


def model(dtype: torch.dtype = torch.float64) -> TwinMLP:
    torch.manual_seed(0)
    return TwinMLP().to(dtype)


def config(mode: str, **cfg) -> SRFTConfig:
    return SRFTConfig(**{"prior_rank": 3, "total_steps": 8, "lambda_prior": 40.0, "lambda_transfer": 0.0,
                         "prior_application": mode, "transfer_statistics": "own", "transfer_beta": 0.0,
                         "kappa_horizon": 0.5, **cfg})


def optimizer(net: nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with two param groups of different lr (fc1 vs the rest: the K-FAC group mixes them) and a decaying lr."""
    fc1 = [p for n, p in net.named_parameters() if n.startswith("fc1.")]
    rest = [p for n, p in net.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adam([{"params": fc1, "lr": 0.04}, {"params": rest, "lr": 0.015}])
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 - 0.2 * t)


def task_loss(out: torch.Tensor) -> torch.Tensor:
    return (out - 1.0).pow(2).mean()


def shift_(net: nn.Module, size: float) -> None:
    """Move every weight away from the anchor by a fixed random amount (so that a first step already sees a drift)."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in net.parameters():
            p.add_((size * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(p.dtype))


def run_srft(mode: str, steps: int = 5, micro: int = 1, dtype: torch.dtype = torch.float64, monitor: bool = False,
             shift: float = 0.0, stored_clip: Optional[float] = None, **cfg):
    """``stored_clip``: train with the estimated prior's curvatures clipped before it is set (as a file would hold)."""
    data = batches(dtype)
    srft = get_srft_model(model(dtype), config(mode, **cfg))
    srft.estimate_prior(data[:2], progress=False)
    if stored_clip is not None:
        srft.set_prior(srft.prior.clipped(stored_clip))
    shift_(srft.base_model, shift)
    if monitor:
        srft.monitor()
    opt, sched = optimizer(srft.base_model)
    srft.attach(opt)
    for step in range(steps):
        for m in range(micro):
            (task_loss(srft(data[(step * micro + m) % len(data)])) / micro).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return srft


# --- the reference -------------------------------------------------------------------------------------------------
def curvature(srft, omega_max: Optional[float] = None) -> dict[str, torch.Tensor]:
    """F per regularized parameter name as an explicit float64 matrix over the row-major vec: (U kron V) diag(omega)
    (U kron V)^T for K-FAC weights (vec(U M V^T) = (U kron V) vec(M) row-major), diag(F) for the others; with
    ``omega_max`` every curvature is min(omega, omega_max) first."""
    out = {}
    for name, e in srft.prior.entries.items():
        values = e.significance_values().double().reshape(-1)
        if omega_max is not None:
            values = torch.minimum(values, torch.tensor(omega_max, dtype=torch.float64))
        if isinstance(e, KFACSignificance):
            K = torch.kron(e.U.double(), e.V.double())
            out[name] = K @ torch.diag(values) @ K.T
        else:
            out[name] = torch.diag(values)
    return out


def damping(g: torch.Tensor, cfg: SRFTConfig, gamma: float) -> torch.Tensor:
    """gamma m of 'value' mode with v = g^2 (transfer_beta 0): m = m_min + (m_max - m_min) min(v / mean(v) / s_max, 1)."""
    v = g.double().pow(2)
    r = (v / v.mean() / cfg.spikiness_max).clamp(max=1.0)
    return gamma * (cfg.damping_min + (cfg.damping_max - cfg.damping_min) * r)


def reference(srft, mode: str, steps: int = 5, micro: int = 1, dtype: torch.dtype = torch.float64,
              record: Optional[list] = None, prior_first: bool = False, shift: float = 0.0,
              omega_max: Optional[float] = None) -> dict[str, torch.Tensor]:
    """The same training in float64 with plain Adam on the task loss and every formula written out per parameter
    (``prior_first``: the other order, the prior on theta' and the damping on the total step)."""
    cfg, data = srft.srft_config, batches(dtype)
    net = model(dtype)
    names = srft.regularized_parameters
    params = dict(net.named_parameters())
    theta0 = {n: params[n].detach().double().reshape(-1).clone() for n in names}
    shift_(net, shift)
    F = curvature(srft, omega_max)
    opt, sched = optimizer(net)
    lr_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    for step in range(steps):
        for m in range(micro):
            (task_loss(net(data[(step * micro + m) % len(data)])) / micro).backward()
        lam, gamma = coefficients(cfg, step, cfg.total_steps)
        before = {n: params[n].detach().double().reshape(-1).clone() for n in names}
        eta = {n: lr_of[id(params[n])]["lr"] for n in names}
        if mode == "gradient":
            with torch.no_grad():
                for n in names:
                    params[n].grad += (lam * F[n] @ (before[n] - theta0[n])).view_as(params[n]).to(dtype)
        grads = {n: params[n].grad.detach().reshape(-1).clone() for n in names}
        opt.step()
        sched.step()
        opt.zero_grad()
        parts = {"task": 0.0, "damping": 0.0, "prior": 0.0, "drift": 0.0}
        with torch.no_grad():
            for n in names:
                theta = params[n].detach().double().reshape(-1)  # theta', the optimizer's result
                parts["task"] += float((theta - before[n]).pow(2).sum())
                m = damping(grads[n], cfg, gamma)
                cut = m * (theta - before[n])
                parts["damping"] += float(cut.pow(2).sum())
                theta = theta if prior_first else theta - cut
                c = eta[n] * lam
                if mode == "decoupled":
                    new = theta - c * F[n] @ (before[n] - theta0[n])
                elif mode == "proximal":
                    eye = torch.eye(theta.numel(), dtype=torch.float64)
                    new = theta0[n] + torch.linalg.solve(eye + c * F[n], theta - theta0[n])
                else:  # gradient mode: the monitor reports eta lambda_p ||grad R_prior||, the pull before Adam
                    new = theta
                    parts["prior"] += float((c * F[n] @ (before[n] - theta0[n])).pow(2).sum())
                parts["prior"] += float((new - theta).pow(2).sum())
                if prior_first:
                    new = new - m * (new - before[n])
                params[n].copy_(new.view_as(params[n]))
                e = srft.prior.entries[n]
                d = new - theta0[n]
                if isinstance(e, KFACSignificance):
                    d = e.U.double().T @ d.view(params[n].shape) @ e.V.double()
                parts["drift"] += float(d.pow(2).sum())
        if record is not None:
            record.append({k: v ** 0.5 for k, v in parts.items()})
    return {n: p.detach() for n, p in net.named_parameters()}


def max_diff(srft, ref: dict[str, torch.Tensor]) -> float:
    return max(float((p.detach().double() - ref[n].detach().double()).abs().max())
               for n, p in srft.base_model.named_parameters())


# float64 weights, SRFT's state and arithmetic in float32: U^T W V - P0 and F (theta - theta0) carry the rounding of
# float32 sums of <= 16 terms, two products deep, scaled by c omega <= 1; over 5 Adam steps of lr <= 0.04 (each moves
# a weight by at most lr times the gradient's relative error) that is 1.5e-6, while the modes differ by > 1e-3
# (checked below).
TOL = adam_trajectory_tolerance(16, depth=2, steps=5, lr=0.04)["atol"]


@pytest.mark.parametrize("mode", MODES)
def test_mode_matches_the_float64_reference(mode):
    srft = run_srft(mode)
    ref = reference(srft, mode)
    assert srft.step == 5 and max_diff(srft, ref) < TOL


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_mode_then_transfer_damping_order_matches_the_reference(mode):
    """With the transfer term on (gamma(t) > 0 mid-run): damping of the optimizer's step first, then the prior."""
    srft = run_srft(mode, lambda_transfer=1.0)
    ref = reference(srft, mode)
    assert max_diff(srft, ref) < TOL
    # the other order, the prior first and the damping on the total step, is measurably different
    assert max_diff(srft, reference(srft, mode, prior_first=True)) > 1e2 * TOL


@pytest.mark.parametrize("mode", MODES)
def test_omega_max_clips_the_curvature_in_every_mode(mode):
    """``omega_max``: the same training as the reference whose curvatures are min(omega, omega_max), measurably unlike
    the unclipped one (the clip at 1, the mean, cuts the steeper half), and the stored prior keeps its values."""
    srft = run_srft(mode, omega_max=1.0)
    # nothing clipped in what the model keeps (and saves)
    assert max(float(e.significance_values().max()) for e in srft.prior.entries.values()) > 2.0
    assert max_diff(srft, reference(srft, mode, omega_max=1.0)) < TOL
    assert max_diff(srft, reference(srft, mode)) > 1e2 * TOL
    # the same weights, bit for bit, as the unclipped option on a prior whose values were clipped beforehand
    stored = run_srft(mode, stored_clip=1.0)
    assert all(torch.equal(a, b) for a, b in zip(srft.base_model.parameters(), stored.base_model.parameters()))


def test_the_three_modes_give_different_weights_under_adam():
    runs = {mode: run_srft(mode) for mode in MODES}
    plain = run_srft("gradient", lambda_prior=0.0)
    weights = {m: torch.cat([p.detach().reshape(-1) for p in s.base_model.parameters()]) for m, s in runs.items()}
    base = torch.cat([p.detach().reshape(-1) for p in plain.base_model.parameters()])
    for i, a in enumerate(MODES):
        assert float((weights[a] - base).abs().max()) > 1e3 * TOL, a  # each mode does something
        for b in MODES[i + 1:]:
            assert float((weights[a] - weights[b]).abs().max()) > 1e3 * TOL, (a, b)


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_gradient_accumulation_applies_the_prior_once_per_step(mode):
    srft = run_srft(mode, steps=3, micro=2)
    assert srft.step == 3 and max_diff(srft, reference(srft, mode, steps=3, micro=2)) < TOL


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_a_step_the_grad_scaler_skips_applies_nothing(mode):
    srft = run_srft(mode, steps=2, lambda_transfer=1.0)
    opt, _ = optimizer(srft.base_model)
    srft.attach(opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    scaler.scale(task_loss(srft(batches()[0]))).backward()
    srft.base_model.fc1.weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in srft.parameters()]
    scaler.step(opt)
    scaler.update()
    assert srft.step == 2 and all(torch.equal(a, b) for a, b in zip(before, srft.parameters()))


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_bf16_parameters_get_the_float32_result_rounded(mode):
    """bf16 weights, float32 state: one step with the damping on (the decoupled pull then goes through the float32
    snapshot) equals the float64 reference rounded to bf16 within two bf16 ulps (the result is rounded twice)."""
    srft = run_srft(mode, steps=1, dtype=torch.bfloat16, lambda_transfer=1.0, kappa_start=0.5, kappa_end=0.5,
                    kappa_shape="constant", shift=0.05)
    ref = reference(srft, mode, steps=1, dtype=torch.bfloat16, shift=0.05)
    for n, p in srft.base_model.named_parameters():
        exact = ref[n].double()
        ulp = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp_min(1e-30))) - 7)
        assert p.dtype == torch.bfloat16 and bool(((p.double() - exact).abs() <= 2 * ulp).all()), n
    plain = run_srft(mode, steps=1, dtype=torch.bfloat16, lambda_prior=0.0, lambda_transfer=1.0, kappa_start=0.5,
                     kappa_end=0.5, kappa_shape="constant", shift=0.05)
    assert max_diff(srft, {n: p for n, p in plain.base_model.named_parameters()}) > 0.0


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_resume_mid_training_continues_exactly(mode):
    whole = run_srft(mode, steps=6, lambda_transfer=1.0)
    data = batches()
    srft = get_srft_model(model(), config(mode, lambda_transfer=1.0))
    srft.estimate_prior(data[:2], progress=False)
    opt, sched = optimizer(srft.base_model)
    srft.attach(opt)
    for step in range(6):
        if step == 3:  # save, rebuild everything, load
            state = (copy.deepcopy(srft.base_model.state_dict()), srft.training_state(), copy.deepcopy(opt.state_dict()),
                     sched.state_dict())
            srft.detach()
            srft = get_srft_model(model(), config(mode, lambda_transfer=1.0))
            srft.base_model.load_state_dict(state[0])
            srft.load_training_state(state[1])
            opt, sched = optimizer(srft.base_model)
            opt.load_state_dict(state[2])
            sched.load_state_dict(state[3])
            srft.attach(opt)
        task_loss(srft(data[step % len(data)])).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    for (n, a), b in zip(whole.base_model.named_parameters(), srft.base_model.parameters()):
        assert torch.equal(a, b), n


def test_config_errors_name_the_field_and_the_value():
    with pytest.raises(ValueError, match=r"prior_application must be one of .* got 'adamw'"):
        SRFTConfig(prior_application="adamw")
    with pytest.raises(ValueError, match=r"prior_application='proximal' needs apply='grad'.*'gradient' only"):
        SRFTConfig(prior_application="proximal", apply="loss")
    assert SRFTConfig().prior_application == "gradient"
    for bad in (0, -1.0, float("nan"), float("inf"), True, "10"):
        with pytest.raises(ValueError, match=r"omega_max must be"):
            SRFTConfig(omega_max=bad)
    assert SRFTConfig().omega_max is None and SRFTConfig(omega_max=10).omega_max == 10


def test_lora_adapters_refuse_other_modes_naming_the_supported_one():
    peft = pytest.importorskip("peft")
    net = peft.get_peft_model(model(torch.float32), peft.LoraConfig(r=2, target_modules=["fc1", "fc2"]))
    with pytest.raises(ValueError, match=r"LoRA adapters .* supports prior_application='gradient' only"):
        get_srft_model(net, SRFTConfig(prior_application="decoupled", total_steps=3))


def test_add_prior_gradient_does_nothing_outside_gradient_mode():
    """Under decoupled/proximal there is no prior gradient: the call leaves the gradients as they are, and the step
    applies the prior once, after the optimizer (the same weights as without the call)."""
    with_call, without = run_srft("decoupled", steps=1), run_srft("decoupled", steps=1)
    for srft, call in ((with_call, True), (without, False)):
        opt, _ = optimizer(srft.base_model)
        srft.attach(opt)
        task_loss(srft(batches()[1])).backward()
        grads = [p.grad.clone() for p in regularized_params(srft)]
        if call:
            srft.add_prior_gradient()
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, regularized_params(srft)))
        opt.step()
    for a, b in zip(with_call.parameters(), without.parameters()):
        assert torch.equal(a, b)


def test_omega_max_is_saved_with_the_config_and_the_significance_unclipped(tmp_path):
    from srft_peft.checkpoint import load_significance_checkpoint

    srft = run_srft("decoupled", steps=1, omega_max=1.0)
    srft.save_pretrained(tmp_path)
    saved = load_significance_checkpoint(tmp_path)
    assert saved.config.omega_max == 1.0
    for name, e in srft.prior.entries.items():
        assert torch.equal(saved.prior.entries[name].significance_values(), e.significance_values()), name
    assert max(float(e.significance_values().max()) for e in saved.prior.entries.values()) > 1.0  # nothing clipped
