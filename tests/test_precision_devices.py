"""Half precision, model moves after the prior exists, and attach safety (wrong inputs change nothing)."""

import copy
import warnings

import pytest
import torch
from engine_helpers import engine_copy, regularized_params, state_tensor
from tolerances import assert_close32

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.significance.prior import KFACSignificance

HALF = [torch.bfloat16, torch.float16]


def _config(**overrides):
    return SRFTConfig(**{"target_modules": None, "prior_rank": 3, "total_steps": 8, **overrides})


def _float32_prior(model, batches, **cfg):
    """A prior estimated on a float32 copy of ``model`` (calibration itself is not what these tests check)."""
    return get_srft_model(copy.deepcopy(model).float(), _config(**cfg)).estimate_prior(batches, progress=False)


def _prior_gradient_float64(srft, anchors):
    """grad R_prior at the current weights, in float64 from the prior's U, V, omega / F and the anchor weights."""
    out = []
    for t, w0 in zip(srft.regularized_targets, anchors):
        e = srft.prior.entries[t.name]
        d = t.param.detach().double() - w0
        if isinstance(e, KFACSignificance):
            U, V, omega = e.U.double(), e.V.double(), e.omega.double()
            d2 = d.reshape(d.shape[0], -1)
            out.append((U @ (omega * (U.T @ d2 @ V)) @ V.T).reshape(d.shape))
        else:
            out.append(e.fisher.double().reshape(d.shape) * d)
    return out


def _relative_error(got, ref):
    num = sum(float((g.double() - r).pow(2).sum()) for g, r in zip(got, ref))
    return (num / sum(float(r.pow(2).sum()) for r in ref)) ** 0.5


def _grads_after_pre_hook(srft):
    """The gradients after SRFT's pre-step hook on zero gradients (SGD with lr 0: only SRFT's work shows)."""
    for p in regularized_params(srft):
        p.grad = torch.zeros_like(p)
    opt = torch.optim.SGD(srft.parameters(), lr=0.0)
    srft.attach(opt)
    opt.step()
    srft.detach()
    return [p.grad for p in regularized_params(srft)]


@pytest.mark.parametrize("dtype", HALF)
def test_prior_gradient_of_a_half_model_matches_float64(token_mlp, token_batches, dtype):
    prior = _float32_prior(token_mlp, token_batches)
    model = token_mlp.to(dtype)  # cast before wrapping, as with HF models loaded in bf16
    srft = get_srft_model(model, _config())
    srft.set_prior(prior)
    anchors = [p.detach().double() for p in regularized_params(srft)]
    with torch.no_grad():
        torch.manual_seed(3)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.005)  # a fine-tuning-sized step: U^T W V - P0 cancels
    ref = _prior_gradient_float64(srft, anchors)
    grads = _grads_after_pre_hook(srft)
    assert all(g.dtype == dtype for g in grads)
    err = _relative_error(grads, ref)
    assert err < 2 ** -8, err  # only the final rounding into the parameters' dtype
    saved = srft.srft_state_dict()["tensors"]
    assert all(t.dtype == torch.float32 for k, t in saved.items() if k.startswith("anchor.")), saved.keys()
    state = engine_copy(srft)  # the same prior and anchors, built explicitly
    assert state.prior_term.groups[0][1].dtype == torch.float32 and state.prior_term.fisher[0].dtype == torch.float32
    ws = state.layout.new_buffer()
    state.prior_term.gradient_into_(state._float32_params(), ws)
    assert _relative_error(state.layout.views(ws), ref) < 1e-5
    autograd = torch.autograd.grad(srft.prior_penalty(), state.params)  # the loss-mode penalty is float32 too
    assert _relative_error(autograd, ref) < 2 ** -8


def test_fp16_squared_gradient_neither_overflows_nor_underflows(token_mlp, token_batches):
    prior = _float32_prior(token_mlp, token_batches)
    srft = get_srft_model(token_mlp.half(), _config(transfer_statistics="own", lambda_prior=0.0))
    srft.set_prior(prior)
    params = regularized_params(srft)
    opt = torch.optim.SGD(srft.parameters(), lr=1e-3)
    srft.attach(opt)
    big, small = torch.tensor(300.0, dtype=torch.float16), torch.tensor(1e-4, dtype=torch.float16)
    for i, p in enumerate(params):  # 300^2 overflows fp16 (max 65504), 1e-4^2 underflows it (min 6e-8)
        p.grad = torch.full_like(p, big if i % 2 == 0 else small)
    opt.step()
    v = engine_copy(srft).layout.views(state_tensor(srft, "transfer.v"))
    beta = srft.srft_config.transfer_beta
    for i, (p, vi) in enumerate(zip(params, v)):
        g = float(big if i % 2 == 0 else small)
        assert vi.dtype == torch.float32
        # float32 elementwise (1 - beta) * g * g against the same product rounded once: no reduction, two roundings
        assert_close32(vi, torch.full_like(vi, (1 - beta) * g * g), reduction_size=1, depth=2)
        assert torch.isfinite(p).all()


def _fixed_gradient_steps(srft, steps=3, lr=1e-2):
    """SGD steps with the same fixed gradients whatever the model's dtype (AdamW's eps=1e-8 underflows in fp16)."""
    params = regularized_params(srft)
    opt = torch.optim.SGD(srft.parameters(), lr=lr, momentum=0.9)
    srft.attach(opt)
    g = torch.Generator().manual_seed(5)
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]
    for step in grads:
        for p in srft.parameters():
            p.grad = None
        for p, gp in zip(params, step):
            p.grad = gp.to(p.device, p.dtype)
        opt.step()
    return opt


@pytest.mark.parametrize("move", ["double", "half", "bfloat16", "base_double"])
def test_state_follows_dtype_moves_after_the_prior(token_mlp, token_batches, move):
    """A move after estimate_prior used to fail at the first step ("expected m1 and m2 to have the same dtype")."""
    srft = get_srft_model(token_mlp, _config(transfer_statistics="own"))
    srft.estimate_prior(token_batches, progress=False)
    dtype = {"double": torch.float64, "half": torch.float16, "bfloat16": torch.bfloat16,
             "base_double": torch.float64}[move]
    reference = copy.deepcopy(srft)
    if move == "base_double":
        token_mlp.double()  # the wrapped model itself, not the SRFTModel
    elif move == "bfloat16":
        assert srft.to(torch.bfloat16) is srft
    else:
        getattr(srft, move)()
    with torch.no_grad():  # the float32 reference starts from exactly the moved weights
        for p, q in zip(regularized_params(reference), regularized_params(srft)):
            p.copy_(q.float())
    _fixed_gradient_steps(srft)
    _fixed_gradient_steps(reference)
    assert all(t.dtype == torch.float32 for t in srft.srft_state_dict()["tensors"].values())  # v and anchors
    for name, p, q in zip(srft.regularized_parameters, regularized_params(srft), regularized_params(reference)):
        assert p.dtype == dtype and torch.isfinite(p).all(), name
        if dtype == torch.float64:
            # the float32 reference against float64 weights: SRFT's terms U (omega * U^T D V) V^T (reductions over the
            # widths <= 6 and rank 3: 4 chained products) in each of the 3 steps
            assert_close32(q, p, reduction_size=6, depth=3 * 4, msg=name)
        else:  # half weights: one rounding to 8 significand bits (bfloat16) per step dominates
            torch.testing.assert_close(p.float(), q, rtol=2 ** -7, atol=2 ** -7, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("how", ["srft", "base"])
def test_state_follows_a_move_to_cuda(token_mlp, token_batches, how):
    srft = get_srft_model(token_mlp, _config(transfer_statistics="own", transfer_mode="rank"))
    srft.estimate_prior(token_batches, progress=False)
    reference = copy.deepcopy(srft)
    _fixed_gradient_steps(reference, steps=1)  # a CPU step first: rank codes exist before the move
    _fixed_gradient_steps(srft, steps=1)
    (srft if how == "srft" else token_mlp).to("cuda")
    _fixed_gradient_steps(srft, steps=2)
    _fixed_gradient_steps(reference, steps=2)
    saved = srft.srft_state_dict()["tensors"]
    assert "transfer.v" in saved and any(k.startswith("transfer.rank_codes.") for k in saved)
    assert all(t.device.type == "cuda" for t in saved.values()), {k: t.device for k, t in saved.items()}
    for name, p, q in zip(srft.regularized_parameters, regularized_params(srft), regularized_params(reference)):
        assert p.device.type == "cuda"
        assert_close32(p.cpu(), q, reduction_size=6, depth=3 * 4, msg=name)  # CUDA kernels: as the float64 move
    srft.cpu()
    assert all(t.device.type == "cpu" for t in srft.srft_state_dict()["tensors"].values())


# --- attach ---------------------------------------------------------------------------------------------------------
def test_attach_without_prior_warns_naming_lambda_prior(token_mlp):
    srft = get_srft_model(token_mlp, _config(lambda_prior=0.5))
    with pytest.warns(UserWarning, match=r"lambda_prior=0\.5 but no prior significance.*estimate_prior"):
        srft.attach(torch.optim.SGD(srft.parameters(), lr=0.1))
    quiet = get_srft_model(copy.deepcopy(token_mlp), _config(lambda_prior=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.attach(torch.optim.SGD(quiet.parameters(), lr=0.1))


def _hooks(opt):
    return len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)


def test_second_srft_over_the_same_model_is_refused_on_one_optimizer(token_mlp, token_batches):
    """A re-run notebook cell: the model wrapped twice, both attached to one optimizer, would add the prior twice."""
    prior = _float32_prior(token_mlp, token_batches)
    first = get_srft_model(token_mlp, _config())
    second = get_srft_model(token_mlp, _config())
    first.set_prior(prior)
    second.set_prior(prior)
    opt = torch.optim.SGD(token_mlp.parameters(), lr=0.0)
    first.attach(opt)
    hooks = _hooks(opt)
    with pytest.raises(ValueError, match=r"SGD already has an SRFT attachment for parameter 'pos'"):
        second.attach(opt)
    assert _hooks(opt) == hooks and first.attached and not second.attached
    with torch.no_grad():
        token_mlp.fc1.weight.add_(0.1)
    once = _grads_after_pre_hook(copy.deepcopy(first))
    for p in token_mlp.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # the prior gradient counted once: the same engine kernels on a copy of the same weights and state, so exactly
    torch.testing.assert_close([p.grad for p in regularized_params(first)], once, rtol=0, atol=0)
    first.attach(opt)  # re-attaching the same SRFTModel replaces its own hooks
    assert _hooks(opt) == hooks
    first.detach()
    second.attach(opt)  # allowed once the first is detached
    assert second.attached


def _attached_with_adam(token_mlp):
    srft = get_srft_model(token_mlp, _config(transfer_statistics="optimizer", lambda_prior=0.0))
    opt = torch.optim.AdamW(srft.parameters(), lr=0.1, weight_decay=0.0)
    srft.attach(opt)
    return srft, opt


def _unchanged(srft, opt, hooks):
    state = srft.srft_state_dict()
    return (srft.attached and state["statistics"] == "optimizer" and state["total_steps"] == 8 and srft.step == 0
            and _hooks(opt) == hooks)


def test_failed_reattach_keeps_the_working_attachment(token_mlp):
    srft, opt = _attached_with_adam(token_mlp)
    hooks = _hooks(opt)
    with pytest.raises(ValueError, match=r"transfer_statistics='optimizer'.*got SGD"):
        srft.attach(torch.optim.SGD(srft.parameters(), lr=0.1), total_steps=99)
    assert _unchanged(srft, opt, hooks)


@pytest.mark.parametrize("bad", [0, -1, "10", 2.5, True])
def test_bad_total_steps_changes_nothing(token_mlp, bad):
    srft, opt = _attached_with_adam(token_mlp)
    hooks = _hooks(opt)
    with pytest.raises(ValueError, match=f"total_steps must be a positive integer, got {bad!r}"):
        srft.attach(torch.optim.AdamW(srft.parameters(), lr=0.1, weight_decay=0.0), total_steps=bad)
    assert _unchanged(srft, opt, hooks)


def test_attach_to_a_non_optimizer_changes_nothing(token_mlp):
    srft, opt = _attached_with_adam(token_mlp)
    hooks = _hooks(opt)
    with pytest.raises(TypeError, match="needs a torch.optim.Optimizer .*got dict"):
        srft.attach({"lr": 0.1})
    assert _unchanged(srft, opt, hooks)


def test_optimizer_without_the_regularized_parameters_changes_nothing(token_mlp):
    srft, opt = _attached_with_adam(token_mlp)
    hooks = _hooks(opt)
    with pytest.raises(ValueError, match=r"regularized parameter 'pos' .* is not in the optimizer"):
        srft.attach(torch.optim.AdamW(token_mlp.fc2.parameters(), lr=0.1, weight_decay=0.0))
    assert _unchanged(srft, opt, hooks)


def test_lora_prior_gradient_of_a_bf16_model_matches_autograd_in_float64(token_mlp, token_batches):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(token_mlp, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"]))
    with torch.no_grad():
        torch.manual_seed(4)
        for name, p in lora.named_parameters():
            if ".lora_" in name:
                p.copy_(0.3 * torch.randn_like(p))
    cfg = {"target_modules": ["fc1", "fc2"]}
    prior = get_srft_model(copy.deepcopy(lora), _config(**cfg)).estimate_prior(token_batches, progress=False)
    half, full = copy.deepcopy(lora).to(torch.bfloat16), copy.deepcopy(lora).to(torch.bfloat16).double()
    srft_half, srft_full = get_srft_model(half, _config(**cfg)), get_srft_model(full, _config(**cfg))
    srft_half.set_prior(prior)
    srft_full.set_prior(prior)  # the same anchors: the bf16 values, exact in float64
    assert {t.kind for t in srft_half.regularized_targets} == {"lora_A", "lora_B"}
    with torch.no_grad():
        torch.manual_seed(5)
        for p, q in zip(regularized_params(srft_half), regularized_params(srft_full)):
            p.add_(torch.randn_like(p) * 0.005)
            q.copy_(p.double())
    ref = [g.double() for g in torch.autograd.grad(srft_full.prior_penalty(), regularized_params(srft_full))]
    err = _relative_error(_grads_after_pre_hook(srft_half), ref)
    assert err < 2 ** -8, err
