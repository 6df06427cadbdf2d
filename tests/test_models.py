"""SRFT on the model families users bring: timm ViT, Hugging Face ViT / DINOv2, a plain nn.Module."""

import pytest
import torch
from engine_helpers import regularized_params
from torch import nn
from transformers import Dinov2Config, Dinov2Model, ViTConfig, ViTForImageClassification, ViTModel

from srft_peft import SRFTConfig, get_srft_model

HF_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=16,
              patch_size=8)


def run_srft(model, batch, loss_of, config=None):
    """Outputs unchanged by wrapping; prior estimation; three AdamW steps move the weights and count the steps."""
    model.eval()
    with torch.no_grad():
        ref = loss_of(model(**batch) if isinstance(batch, dict) else model(batch))
    srft = get_srft_model(model, config or SRFTConfig(prior_rank=4, total_steps=3))
    srft.eval()
    with torch.no_grad():
        wrapped = loss_of(srft(**batch) if isinstance(batch, dict) else srft(batch))
    assert torch.equal(wrapped, ref)
    prior = srft.estimate_prior([batch, batch], progress=False)
    assert set(prior.entries) == set(srft.regularized_parameters)
    srft.train()
    opt = torch.optim.AdamW(srft.parameters(), lr=1e-3, weight_decay=0.0)
    srft.attach(opt)
    before = [p.detach().clone() for p in regularized_params(srft)]
    for _ in range(3):
        out = srft(**batch) if isinstance(batch, dict) else srft(batch)
        loss_of(out).backward()
        opt.step()
        opt.zero_grad()
    assert srft.step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, regularized_params(srft)))
    return srft


def test_timm_vit(tiny_vit):
    srft = run_srft(tiny_vit(), torch.randn(2, 3, 32, 32), lambda out: out.pow(2).mean())
    names = srft.regularized_parameters
    assert "pos_embed" in names and "blocks.0.attn.qkv.weight" in names and not any(n.startswith("head") for n in names)
    kinds = {r["name"]: r["kind"] for r in srft.significance_summary()}
    assert kinds["patch_embed.proj.weight"] == "kfac"  # the patch embedding is a Linear over unfolded patches


def test_hf_vit_for_image_classification_uses_model_loss():
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(**HF_VIT, num_labels=3))
    batch = {"pixel_values": torch.randn(4, 3, 16, 16), "labels": torch.tensor([0, 1, 2, 1])}
    srft = run_srft(model, batch, lambda out: out.loss)
    assert srft.prior.objective == "model_loss"
    assert not any(n.startswith("classifier") for n in srft.regularized_parameters)
    assert any(n.endswith(("q_proj.weight", "query.weight")) for n in srft.regularized_parameters)


def test_hf_vit_model_preset_excludes_pooler():
    torch.manual_seed(0)
    srft = get_srft_model(ViTModel(ViTConfig(**HF_VIT)), SRFTConfig(total_steps=3))
    assert not any("pooler" in n for n in srft.regularized_parameters)
    assert "embeddings.position_embeddings" in srft.regularized_parameters


def test_dinov2_model_label_free():
    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(**HF_VIT))
    with pytest.warns(UserWarning, match="mask_token"):  # the unused mask token gets no calibration gradient
        srft = run_srft(model, {"pixel_values": torch.randn(2, 3, 16, 16)},
                        lambda out: out.last_hidden_state.pow(2).mean())
    assert srft.prior.objective == "output_norm"


def test_custom_module_with_conv_and_layernorm():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, stride=2)
            self.norm = nn.LayerNorm(8)
            self.proj = nn.Linear(8, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            h = self.stem(x).flatten(2).transpose(1, 2)
            return self.head(self.proj(self.norm(h)).mean(1))

    torch.manual_seed(0)
    srft = run_srft(Net(), torch.randn(3, 3, 8, 8), lambda out: out.pow(2).mean())
    assert [r["kind"] for r in srft.significance_summary() if r["name"] == "stem.weight"] == ["kfac"]
    assert "head.weight" not in srft.regularized_parameters
    assert "stem.weight" in str(srft.significance_summary())
