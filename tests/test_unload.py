"""peft-style exits from SRFT: ``unload`` / ``merge_and_unload`` give the plain fine-tuned model, the state dict is the
wrapped model's own, and parameter counts are reported like peft's."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from srft_peft import SRFTConfig, get_srft_model


def _tuned(tiny_vit, steps: int = 3):
    """A tiny timm ViT fine-tuned a few steps under SRFT, its optimizer and its initial weights."""
    srft = get_srft_model(tiny_vit(), SRFTConfig(prior_rank=2, total_steps=10, lambda_prior=10.0))
    g = torch.Generator().manual_seed(0)
    srft.estimate_prior([torch.randn(4, 3, 32, 32, generator=g)], progress=False)
    initial = {k: v.clone() for k, v in srft.state_dict().items()}
    opt = torch.optim.SGD(srft.parameters(), lr=0.1)
    srft.attach(opt)
    for _ in range(steps):
        opt.zero_grad()
        srft(torch.randn(4, 3, 32, 32, generator=g)).pow(2).mean().backward()
        opt.step()
    return srft, opt, initial


@pytest.mark.parametrize("method", ["unload", "merge_and_unload"])
def test_unload_returns_the_plain_fine_tuned_model_with_the_optimizer_hooks_removed(tiny_vit, method):
    import timm.models.vision_transformer as vt

    srft, opt, _ = _tuned(tiny_vit)
    base = srft.base_model
    tuned = {k: v.clone() for k, v in base.state_dict().items()}
    plain = getattr(srft, method)()
    assert plain is base and type(plain) is vt.VisionTransformer
    assert not srft.attached and srft.step == 3
    # a step after unloading is a plain SGD step: SRFT neither counts it nor changes the gradient
    probe = get_srft_model(tiny_vit(), SRFTConfig(prior_rank=2)).base_model
    probe.load_state_dict(tuned)
    probe_opt = torch.optim.SGD(probe.parameters(), lr=0.1)
    x = torch.randn(2, 3, 32, 32)
    for model, optimizer in ((plain, opt), (probe, probe_opt)):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    assert srft.step == 3
    for (name, a), b in zip(plain.named_parameters(), probe.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    srft.attach(opt)  # the SRFTModel stays usable
    assert srft.attached


def test_state_dict_is_the_wrapped_models_and_loads_into_a_fresh_timm_model(tiny_vit, tmp_path):
    srft, _, initial = _tuned(tiny_vit)
    state = srft.state_dict()
    assert list(state) == list(srft.base_model.state_dict())
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    fresh = tiny_vit()
    fresh.load_state_dict(load_file(tmp_path / "model.safetensors"))  # strict: every key matches
    loaded = fresh.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert any(not torch.equal(loaded[k], initial[k]) for k in initial)


def test_load_state_dict_accepts_own_and_prefixed_keys(tiny_vit):
    srft, _, _ = _tuned(tiny_vit)
    tuned = srft.state_dict()
    for state in (tuned, {f"base_model.{k}": v for k, v in tuned.items()}):
        other = get_srft_model(tiny_vit(), SRFTConfig(prior_rank=2))  # the initial weights
        assert not all(torch.equal(a, b) for a, b in zip(other.parameters(), srft.parameters()))
        result = other.load_state_dict(state)
        assert not result.missing_keys and not result.unexpected_keys
        assert all(torch.equal(a, b) for a, b in zip(other.parameters(), srft.parameters()))


def test_get_nb_trainable_parameters_counts_like_peft(tiny_vit, capsys):
    srft = get_srft_model(tiny_vit(), SRFTConfig(prior_rank=2))
    total = sum(p.numel() for p in srft.base_model.parameters())
    assert srft.get_nb_trainable_parameters() == (total, total)
    srft.base_model.head.requires_grad_(False)
    frozen = sum(p.numel() for p in srft.base_model.head.parameters())
    assert srft.get_nb_trainable_parameters() == (total - frozen, total)
    srft.print_trainable_parameters()
    assert f"trainable params: {total - frozen:,d} || all params: {total:,d}" in capsys.readouterr().out


def test_save_pretrained_writes_nothing_off_the_main_process(tmp_path):
    from checkpoint_helpers import make_srft

    srft = make_srft()
    srft.save_pretrained(tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()
    srft.save_pretrained(tmp_path / "main", is_main_process=True)
    names = sorted(p.name for p in (tmp_path / "main").iterdir())
    assert names[0] == "README.md" and names[2] == "srft_config.json" and names[1].startswith("significance-")
