import pytest
import torch
from torch import nn

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.targeting import select_targets


def names(model, target, exclude=None, estimator="kfac"):
    return [t.name for t in select_targets(model, target, exclude, estimator)]


def test_regex_full_match_and_suffix_list(tiny_vit):
    vit = tiny_vit()
    assert names(vit, r"blocks\.0\.attn\.qkv") == ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    got = names(vit, ["qkv", "pos_embed"])
    assert got == ["pos_embed", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias", "blocks.1.attn.qkv.weight",
                   "blocks.1.attn.qkv.bias"]


def test_default_preset_leaves_the_head_out(tiny_vit):
    vit = tiny_vit()
    got = names(vit, None)
    assert "cls_token" in got and "blocks.1.mlp.fc2.weight" in got
    assert not any(n.startswith("head") for n in got)


def test_all_linear_and_kinds(tiny_vit):
    vit = tiny_vit()
    targets = select_targets(vit, "all-linear", None)
    assert {t.kind for t in targets if t.name.endswith("weight")} == {"kfac"}
    assert {t.kind for t in targets if t.name.endswith("bias")} == {"diagonal"}
    assert "patch_embed.proj.weight" in [t.name for t in targets]
    assert all(t.kind == "diagonal" for t in select_targets(vit, "all-linear", None, "diagonal"))


def test_exclude_and_frozen_parameters(tiny_vit):
    vit = tiny_vit()
    vit.blocks[0].requires_grad_(False)
    got = names(vit, None, exclude=["norm1", r"pos_embed"])
    assert not any(n.startswith("blocks.0.") for n in got)
    assert not any("norm1" in n for n in got) and "pos_embed" not in got


def test_pattern_matching_nothing_raises_with_names():
    with pytest.raises(ValueError) as err:
        get_srft_model(nn.Sequential(nn.Linear(2, 2)), SRFTConfig(target_modules=["nope"]))
    assert "'nope'" in str(err.value) and "0.weight" in str(err.value)


def test_mixed_dtypes_rejected():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(ValueError, match="dtypes"):
        get_srft_model(net, SRFTConfig(target_modules=["0", "1"]))


def test_wrapper_forwards_attributes_and_keeps_outputs(tiny_vit):
    vit = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    ref = vit(x)
    srft = get_srft_model(vit, SRFTConfig(prior_rank=4, total_steps=5)).eval()
    assert torch.equal(srft(x), ref)
    assert srft.num_classes == 5 and srft.get_base_model() is vit
