"""SRFT on peft LoRA adapters: the prior of the base weight acting on the update s B A, without materialising it."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from _integ_common import calibration_batches, examples, flat_params, srft_config, tiny_hf_vit
from engine_helpers import engine_copy
from tolerances import adam_trajectory_tolerance, assert_close32

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.integrations.peft import lora_adapters
from srft_peft.regularizer.lora_term import CombinedPriorTerm
from srft_peft.regularizer.prior_term import PriorTerm

peft = pytest.importorskip("peft")

LAYERS = ["q_proj", "v_proj", "fc1"]


def _lora(base=None, **config):
    fields = dict(r=4, lora_alpha=8, target_modules=LAYERS, lora_dropout=0.0)
    fields.update(config)
    return peft.get_peft_model(copy.deepcopy(base if base is not None else tiny_hf_vit()), peft.LoraConfig(**fields))


def _randomize_adapters(model, std: float = 0.2, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(std * torch.randn(p.shape, generator=g))


def test_lora_factors_become_pairs_sharing_the_base_prior():
    srft = get_srft_model(_lora(), srft_config())
    targets = srft.regularized_targets
    assert {t.kind for t in targets} == {"lora_A", "lora_B"}
    assert len(targets) == 2 * 3 * 2  # 2 blocks x 3 layers x (A, B)
    adapters = lora_adapters(srft)
    assert len(adapters) == 6 and all(a.scale == 2.0 and a.adapter == "default" for a in adapters)
    assert all(a.base_weight.endswith(".base_layer.weight") for a in adapters)
    only_q = get_srft_model(_lora(), srft_config(target_modules=["q_proj"]))  # the LoRA layer's name selects
    assert [a.layer.rsplit(".", 1)[-1] for a in lora_adapters(only_q)] == ["q_proj", "q_proj"]


def test_prior_is_the_base_weights_prior():
    """K-FAC factors hooked on the LoRA layer are those of the base Linear: the same prior as the bare model's. B = 0
    at the start, so the LoRA layer adds exact zeros to its base layer's output and input gradient: the hooks see the
    very same activations and gradients and the same kernels run, so the priors are equal exactly."""
    base = tiny_hf_vit()
    srft = get_srft_model(_lora(base), srft_config())
    prior = srft.estimate_prior(calibration_batches(), progress=False)
    pattern = r"vit\.layers\.\d+\.(attention\.(q_proj|v_proj)|mlp\.fc1)\.weight"
    bare = get_srft_model(copy.deepcopy(base), srft_config(target_modules=pattern))
    reference = bare.estimate_prior(calibration_batches(), progress=False)
    assert len(prior.entries) == len(reference.entries) == 6
    assert prior.normalizer == reference.normalizer
    for name, e in prior.entries.items():
        r = reference.entries[name.replace("base_model.model.", "").replace(".base_layer", "")]
        for got, want in ((e.omega, r.omega), (e.U.abs(), r.U.abs()), (e.V.abs(), r.V.abs())):
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def _prepared(nonzero_start: bool = True):
    model = _lora()
    if nonzero_start:  # B != 0 when SRFT is attached: the anchor P0 is not zero
        _randomize_adapters(model, seed=1)
    srft = get_srft_model(model, srft_config())
    srft.estimate_prior(calibration_batches(), progress=False)
    start = {n: p.detach().clone() for n, p in srft.named_parameters() if ".lora_" in n}
    _randomize_adapters(model, seed=2)
    return srft, start


def _materialised_penalty(srft, start: dict, params: dict) -> torch.Tensor:
    """R from dW = s B A - s B0 A0 formed explicitly, with the base weight's U, V, omega."""
    total = torch.zeros((), dtype=torch.float64)
    prefix = "base_model."
    for a in lora_adapters(srft):
        e = srft.prior.entries[a.base_weight]
        A, B = params[a.lora_A], params[a.lora_B]
        A0, B0 = start[prefix + a.lora_A], start[prefix + a.lora_B]
        dW = a.scale * (B @ A) - a.scale * (B0 @ A0)
        T = e.U.double().T @ dW.double() @ e.V.double()
        total = total + 0.5 * (e.omega.double() * T * T).sum()
    return total


def test_lora_penalty_and_fused_gradient_match_autograd_on_the_materialised_update():
    srft, start = _prepared()
    engine = engine_copy(srft)
    assert isinstance(engine.prior_term, CombinedPriorTerm)
    names = engine.names
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in zip(names, engine.params)}
    reference = _materialised_penalty(srft, start, leaves)
    reference.backward()
    assert reference > 0
    # float32 against float64: B A (LoRA rank 4), U^T dW V (widths <= 64), squared and summed: depth 5; the gradient
    # goes back through V, U, and B or A: depth 8
    assert_close32(engine.penalty(), reference, reduction_size=64, depth=5)
    workspace = engine.layout.new_buffer()
    engine.prior_term.gradient_into_(engine.params, workspace)
    for name, view in zip(names, engine.layout.views(workspace)):
        assert_close32(view, leaves[name].grad, reduction_size=64, depth=8, msg=name)
    # and the same as autograd through the term's own penalty (what apply="loss" differentiates): float32 both sides
    grads = torch.autograd.grad(engine.penalty(), engine.params)
    for g, view in zip(grads, engine.layout.views(workspace)):
        assert_close32(view, g, reduction_size=64, depth=8)


def test_lora_penalty_equals_the_full_weight_penalty_of_the_merged_model():
    base = tiny_hf_vit()
    srft = get_srft_model(_lora(base), srft_config())
    srft.estimate_prior(calibration_batches(), progress=False)
    pattern = r"vit\.layers\.\d+\.(attention\.(q_proj|v_proj)|mlp\.fc1)\.weight"
    bare = get_srft_model(copy.deepcopy(base), srft_config(target_modules=pattern))
    bare.estimate_prior(calibration_batches(), progress=False)  # anchored at the base weights
    _randomize_adapters(srft.base_model, seed=5)
    with torch.no_grad():
        bare_params = dict(bare.base_model.named_parameters())
        for a in lora_adapters(srft):
            layer = srft.base_model.get_submodule(a.layer.removeprefix("base_model."))
            delta = layer.get_delta_weight(a.adapter)
            bare_params[a.base_weight.removeprefix("base_model.model.").replace(".base_layer", "")].add_(delta)
    # float32 both ways: U^T (s B A) V on the adapters, U^T (W + s B A - W) V on the merged weight (widths <= 64)
    assert_close32(srft.prior_penalty(), bare.prior_penalty(), reduction_size=64, depth=5)


def test_non_lora_parameters_keep_the_plain_prior_term():
    # a model without adapters: the engine's term is exactly PriorTerm, as before
    plain = get_srft_model(tiny_hf_vit(), srft_config())
    plain.estimate_prior(calibration_batches(), progress=False)
    assert type(engine_copy(plain).prior_term) is PriorTerm
    # LoRA plus an ordinary trainable module (modules_to_save): the ordinary parameters' slice of the combined
    # gradient equals a stand-alone PriorTerm's on those parameters
    model = _lora(modules_to_save=["layernorm"])
    srft = get_srft_model(model, srft_config())
    srft.estimate_prior(calibration_batches(), progress=False)
    engine = engine_copy(srft)
    kinds = {t.kind for t in engine.targets}
    assert kinds == {"lora_A", "lora_B", "diagonal"}
    _randomize_adapters(model, seed=3)
    plain_index = [i for i, t in enumerate(engine.targets) if t.kind == "diagonal"]
    with torch.no_grad():
        for i in plain_index:
            engine.params[i].add_(0.1)
    workspace = engine.layout.new_buffer()
    engine.prior_term.gradient_into_(engine.params, workspace)
    sub_params = [engine.params[i] for i in plain_index]
    alone = PriorTerm(sub_params, [engine.names[i] for i in plain_index], srft.prior)
    with torch.no_grad():  # re-anchor the stand-alone term where the combined one was anchored
        for t0 in alone.theta0:
            t0.sub_(0.1)
    expected = alone.layout.new_buffer()
    alone.gradient_into_(sub_params, expected)
    views = engine.layout.views(workspace)
    for k, i in enumerate(plain_index):
        # elementwise F * (p - p0), but p0 re-derived as (p + 0.1) - 0.1: two roundings at |p| + 0.1 <= 1.2, each
        # up to 6 eps of d = 0.1; float32_rtol(1, depth=3) is 24 eps
        assert_close32(views[i], alone.layout.views(expected)[k], reduction_size=1, depth=3)
        assert views[i].abs().sum() > 0


def _train_lora(apply: str, steps: int = 5, lambda_prior: float = 200.0, lr: float = 1e-2):
    model = _lora()
    srft = get_srft_model(model, srft_config(apply, total_steps=steps, lambda_prior=lambda_prior))
    srft.estimate_prior(calibration_batches(), progress=False)
    optimizer = torch.optim.AdamW([p for p in srft.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    srft.attach(optimizer)
    for step in range(steps):
        srft(**examples(step, range(8))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return srft


def test_lora_training_same_update_in_both_apply_modes_and_regularized():
    grad = _train_lora("grad")
    loss = _train_lora("loss")
    # the prior gradient by SRFT's fused kernels or by autograd (float32 reductions over widths <= 64, depth 8 as
    # above), in 5 AdamW steps of lr 1e-2
    tol = adam_trajectory_tolerance(64, depth=8, steps=5, lr=1e-2)
    torch.testing.assert_close(flat_params(grad), flat_params(loss), **tol)
    free = _train_lora("grad", lambda_prior=0.0)
    assert float(grad.prior_penalty().detach()) < 0.5 * float(free.prior_penalty().detach())


def test_lora_state_roundtrip():
    srft, _ = _prepared()
    state = srft.training_state()
    assert any(k.startswith("anchor.lora") for k in state["engine"]["tensors"])
    other, _ = _prepared(nonzero_start=False)
    assert not torch.allclose(other.prior_penalty(), srft.prior_penalty())
    other.load_training_state(state)
    torch.testing.assert_close(other.prior_penalty(), srft.prior_penalty(), rtol=0, atol=0)  # a round trip: exact


def test_lora_variants_fall_back_with_a_warning():
    model = _lora(use_dora=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        srft = get_srft_model(model, SRFTConfig(prior_rank=4, total_steps=4))
    assert not lora_adapters(srft)
    assert any("ordinary parameters" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_srft_model(_lora(), SRFTConfig(prior_rank=4, total_steps=4))  # plain LoRA: no warning
    assert not any("SRFT" in str(w.message) for w in caught)
