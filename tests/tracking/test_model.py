"""Tracker model (all modes), RGB -> RGB-X conversion, RGB checkpoint loading and safetensors round trip."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from srft_peft.tracking import (
    OSTrackRGBX,
    TrackerConfig,
    TrackerOutput,
    build_rgbx_from_rgb,
    decode_center_maps,
    load_rgb_checkpoint,
    load_tracker,
    save_tracker,
)

TZ, TX = 32, 64  # template / search sides of the test models (grids 2x2 and 4x4)


def tiny_cfg(**kw) -> TrackerConfig:
    return TrackerConfig(**{"variant": "tiny", "template_size": TZ, "search_size": TX, **kw})


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm buffers/affine non-default values so that copies and loads are really checked."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@pytest.fixture(scope="module")
def rgb_model() -> OSTrackRGBX:
    torch.manual_seed(0)
    model = OSTrackRGBX(tiny_cfg())
    randomize_bn(model)
    return model.eval()


def inputs(b: int = 2, c: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, TZ, TZ, generator=g), torch.randn(b, c, TX, TX, generator=g)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sub_state(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


# --- config -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"variant": "huge"}, "variant"),
        ({"mode": "late_fusion"}, "mode"),
        ({"search_size": 250}, "search_size"),
        ({"fusion_layers": (1, 12)}, "fusion_layers"),
        ({"fusion_layers": (5, 2)}, "fusion_layers"),
        ({"head_channels": 20}, "head_channels"),
        ({"prompt_dim": 0}, "prompt_dim"),
        ({"drop_path": 1.5}, "drop_path"),
        ({"giou_weight": -1.0}, "giou_weight"),
    ],
)
def test_config_validation_names_field_and_value(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        TrackerConfig(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


def test_config_defaults_presets_and_round_trip():
    base = TrackerConfig()
    assert (base.embed_dim, base.depth, base.num_heads, base.head_channels) == (768, 12, 12, 256)
    assert base.fusion_layers == (2, 5, 8, 11)
    assert base.prompt_layers == tuple(range(12))
    assert TrackerConfig(variant="tiny").fusion_layers == (0, 1, 2, 3)
    p256, p384 = TrackerConfig.from_preset("ostrack256"), TrackerConfig.from_preset("ostrack384", mode="prompt")
    assert (p256.template_size, p256.search_size, p256.search_feat_size) == (128, 256, 16)
    assert (p384.template_size, p384.search_size, p384.search_feat_size, p384.mode) == (192, 384, 24, "prompt")
    cfg = tiny_cfg(mode="dual_stream", fusion_layers=[1, 3])
    assert cfg.fusion_layers == (1, 3)
    assert TrackerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="bogus"):
        TrackerConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="preset"):
        TrackerConfig.from_preset("ostrack999")


# --- shapes / outputs -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["rgb", "dual_stream", "prompt"])
def test_output_shapes_default_sizes(mode):
    torch.manual_seed(0)
    model = OSTrackRGBX(TrackerConfig(variant="tiny", mode=mode)).eval()
    c = 3 if mode == "rgb" else 6
    with torch.no_grad():
        out = model(torch.randn(2, c, 128, 128), torch.randn(2, c, 256, 256))
    assert isinstance(out, TrackerOutput)
    assert out.loss is None
    assert out.score_map.shape == (2, 1, 16, 16)
    assert out.size_map.shape == (2, 2, 16, 16)
    assert out.offset_map.shape == (2, 2, 16, 16)
    assert out.pred_boxes.shape == (2, 4)
    assert out.score_map.min() >= 1e-4 and out.score_map.max() <= 1 - 1e-4
    assert ((out.size_map > 0) & (out.size_map < 1)).all()
    torch.testing.assert_close(out.pred_boxes, decode_center_maps(out.score_map, out.size_map, out.offset_map))


@pytest.mark.parametrize("bias, expected", [(40.0, 1 - 1e-4), (-40.0, 1e-4)])
def test_score_map_is_sigmoid_clamped_as_ostrack(rgb_model, bias, expected):
    """OSTrack's CENTER head: sigmoid, then clamp to [1e-4, 1 - 1e-4] (a saturated logit hits the bound exactly)."""
    head = rgb_model.box_head
    original = head.conv5_ctr.bias.detach().clone()
    with torch.no_grad():
        head.conv5_ctr.bias.fill_(bias)
        score = head(torch.randn(1, rgb_model.config.embed_dim, 4, 4))[0]
        head.conv5_ctr.bias.copy_(original)
    torch.testing.assert_close(score, torch.full_like(score, expected))


def test_rgb_mode_uses_first_three_of_six_channels(rgb_model):
    z, x = inputs()
    with torch.no_grad():
        a = rgb_model(z, x)
        b = rgb_model(z[:, :3], x[:, :3])
    torch.testing.assert_close(a.score_map, b.score_map)


def test_bad_input_shapes_raise(rgb_model):
    z, x = inputs()
    with pytest.raises(ValueError, match="search"):
        rgb_model(z, x[..., :32])
    dual = OSTrackRGBX(tiny_cfg(mode="dual_stream"))
    with pytest.raises(ValueError, match="template"):
        dual(z[:, :3], x)


def test_loss_field_first_and_hf_style_access(rgb_model):
    z, x = inputs()
    box = torch.tensor([[0.3, 0.35, 0.3, 0.25], [0.1, 0.2, 0.5, 0.4]])
    model = OSTrackRGBX(tiny_cfg()).train()
    out = model(z, x, search_box=box)
    assert [f for f in out.__dataclass_fields__][0] == "loss"
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out["loss"] is out.loss and out[0] is out.loss and out.to_tuple()[0] is out.loss
    assert set(out.loss_components) >= {"focal", "giou", "l1"}
    w = model.config.loss_weights
    c = out.loss_components
    torch.testing.assert_close(out.loss.detach(), w["focal"] * c["focal"] + w["giou"] * c["giou"] + w["l1"] * c["l1"])
    out.loss.backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None


def test_decode_center_maps_hand_case():
    score = torch.full((1, 1, 4, 4), 0.1)
    score[0, 0, 1, 3] = 0.9  # row 1, column 3
    size = torch.zeros(1, 2, 4, 4)
    size[0, :, 1, 3] = torch.tensor([0.25, 0.125])
    offset = torch.zeros(1, 2, 4, 4)
    offset[0, :, 1, 3] = torch.tensor([0.5, 0.25])
    box = decode_center_maps(score, size, offset)
    torch.testing.assert_close(box, torch.tensor([[3.5 / 4, 1.25 / 4, 0.25, 0.125]]))


# --- naming / trainability --------------------------------------------------------------------------------------------
def test_parameter_names_follow_timm_and_prefixes():
    dual = dict(OSTrackRGBX(tiny_cfg(mode="dual_stream")).named_parameters())
    for name in [
        "backbone.patch_embed.proj.weight",
        "backbone.pos_embed_z",
        "backbone.pos_embed_x",
        "backbone.blocks.0.norm1.weight",
        "backbone.blocks.3.attn.qkv.weight",
        "backbone.blocks.3.attn.proj.bias",
        "backbone.blocks.3.mlp.fc2.weight",
        "backbone.norm.weight",
        "box_head.conv1_ctr.0.weight",
        "box_head.conv4_size.1.bias",
        "box_head.conv5_offset.weight",
        "backbone_x.patch_embed.proj.weight",
        "backbone_x.blocks.3.mlp.fc1.weight",
        "backbone_x.norm.bias",
        "fusion.0.attn.qkv.weight",
        "fusion.3.norm2.weight",
    ]:
        assert name in dual, name
    prompt = dict(OSTrackRGBX(tiny_cfg(mode="prompt")).named_parameters())
    assert "prompt.patch_embed.proj.weight" in prompt and "prompt.blocks.0.up.weight" in prompt
    assert not any(k.startswith(("backbone_x.", "fusion.")) for k in prompt)


@pytest.mark.parametrize("mode", ["rgb", "dual_stream", "prompt"])
def test_trainable_parameter_sets(mode):
    model = OSTrackRGBX(tiny_cfg(mode=mode))
    names = [n for n, _ in model.named_parameters()]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if mode == "rgb":
        expected = set(names)
    elif mode == "dual_stream":
        expected = {n for n in names if not n.startswith("box_head.")}
    else:
        expected = {n for n in names if n.startswith("prompt.")}
    assert trainable == expected
    count = model.count_parameters()
    assert count.total == sum(p.numel() for p in model.parameters())
    assert count.trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert "trainable%" in str(count)


@pytest.mark.parametrize("variant, layers", [("small", None), ("base", None), ("base", (0, 5, 11))])
def test_prompt_mode_trains_under_five_percent(variant, layers):
    """Trainable: the X patch embedding (3 p^2 D + D) and per prompt layer two LayerNorms (4 D), down_rgb and down_x
    (D h + h each) and up (h D + D), counted from the config; under 5 % of the tracker."""
    cfg = TrackerConfig(variant=variant, mode="prompt", prompt_layers=layers)
    with torch.device("meta"):  # no memory, no init cost
        count = OSTrackRGBX(cfg).count_parameters()
    D, h, p = cfg.embed_dim, cfg.prompt_dim, cfg.patch_size
    expected = 3 * p * p * D + D + len(cfg.prompt_layers) * (4 * D + 2 * (D * h + h) + h * D + D)
    assert len(cfg.prompt_layers) == (12 if layers is None else 3)
    assert count.trainable == expected
    assert count.trainable_percent == pytest.approx(100 * expected / count.total, rel=1e-12)
    assert count.trainable_percent < 5


@pytest.mark.parametrize("mode", ["dual_stream", "prompt"])
def test_every_trainable_parameter_receives_gradient(rgb_model, mode):
    model = OSTrackRGBX.from_rgb(rgb_model, mode).train()
    z, x = inputs()
    out = model(z, x, search_box=torch.tensor([[0.3, 0.3, 0.3, 0.3]] * 2))
    out.loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, n
        else:
            assert p.grad is None, n
    # prompt: up-projections start at zero, so the down-projections get no gradient until `up` moves; `up` must.
    if mode == "prompt":
        assert model.prompt.blocks["0"].up.weight.grad.abs().sum() > 0


def test_frozen_head_kept_in_eval_mode(rgb_model):
    dual = OSTrackRGBX.from_rgb(rgb_model, "dual_stream")
    dual.train()
    assert dual.training and dual.backbone.training and not dual.box_head.training
    before = dual.box_head.conv1_ctr[1].running_mean.clone()
    dual(*inputs())
    assert torch.equal(before, dual.box_head.conv1_ctr[1].running_mean)
    prompt = OSTrackRGBX.from_rgb(rgb_model, "prompt").train()
    assert not prompt.backbone.training and not prompt.box_head.training and prompt.prompt.training
    rgb = OSTrackRGBX(tiny_cfg()).train()
    assert rgb.box_head.training


# --- RGB -> RGB-X ----------------------------------------------------------------------------------------------------
def test_dual_stream_from_rgb_copies_weights_exactly(rgb_model):
    dual = build_rgbx_from_rgb(rgb_model, "dual_stream")
    rgb_sd = rgb_model.state_dict()
    dual_sd = dual.state_dict()
    rgb_backbone = sub_state(rgb_sd, "backbone.")
    assert state_equal(sub_state(dual_sd, "backbone."), rgb_backbone)
    assert state_equal(sub_state(dual_sd, "backbone_x."), rgb_backbone)
    assert state_equal(sub_state(dual_sd, "box_head."), sub_state(rgb_sd, "box_head."))
    assert dual.config.fusion_layers == (0, 1, 2, 3)
    for i in dual.config.fusion_layers:
        assert state_equal(sub_state(dual_sd, f"fusion.{i}."), sub_state(rgb_sd, f"backbone.blocks.{i}."))
    # copies, not shared storage
    with torch.no_grad():
        dual.backbone_x.blocks[0].attn.qkv.weight.add_(1.0)
    assert torch.equal(dual.backbone.blocks[0].attn.qkv.weight, rgb_model.backbone.blocks[0].attn.qkv.weight)


def test_dual_stream_wiring_matches_hand_computation(rgb_model):
    """With X = RGB both streams are identical, so joint attention over [r; r] equals attention over r and the model
    must equal the RGB model with each fusion layer's block applied twice (fusion.i is a copy of block i, after i).
    In float64: attention over [r; r] and over r are other reductions (twice the length)."""
    rgb_model = copy.deepcopy(rgb_model).double()
    dual = OSTrackRGBX.from_rgb(rgb_model, "dual_stream", fusion_layers=(1, 3)).eval()
    z, x = (t.double() for t in inputs(c=3))
    bb = rgb_model.backbone
    with torch.no_grad():
        tok = bb.embed(z, x)
        for i, blk in enumerate(bb.blocks):
            tok = blk(tok)
            if i in (1, 3):
                tok = blk(tok)
        tok = bb.norm(tok)[:, -16:]
        score, size, offset = rgb_model.box_head(tok.transpose(1, 2).reshape(2, -1, 4, 4))
        out = dual(torch.cat([z, z], 1), torch.cat([x, x], 1))
        plain = rgb_model(z, x)
    torch.testing.assert_close(out.score_map, score, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.size_map, size, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(out.offset_map, offset, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(out.offset_map, plain.offset_map, atol=1e-4)  # the fusion blocks do act


def test_identity_fusion_init_reproduces_the_rgb_model_then_trains(rgb_model):
    """fusion_init="identity": fed [rgb, rgb], the dual-stream model equals the RGB model exactly; fed [rgb, x] the X
    stream still contributes; the zeroed projections get gradients, so the fusion blocks can learn. Compared in float64:
    the joint attention over [r; r] reduces over twice the tokens of the RGB model's."""
    dual = OSTrackRGBX.from_rgb(rgb_model, "dual_stream", fusion_init="identity").eval()
    rgb_sd, dual_sd = rgb_model.state_dict(), dual.state_dict()
    for i in dual.config.fusion_layers:
        fusion, block = sub_state(dual_sd, f"fusion.{i}."), sub_state(rgb_sd, f"backbone.blocks.{i}.")
        assert fusion.keys() == block.keys()
        for name, value in fusion.items():
            zeroed = name.startswith(("attn.proj.", "mlp.fc2."))
            assert torch.equal(value, torch.zeros_like(value) if zeroed else block[name]), name
    z, x = inputs(c=3)
    with torch.no_grad():
        other = dual(*inputs(c=6))
        dual64 = copy.deepcopy(dual).double()
        z, x = z.double(), x.double()
        out, plain = dual64(torch.cat([z, z], 1), torch.cat([x, x], 1)), copy.deepcopy(rgb_model).double()(z, x)
    for key in ("score_map", "size_map", "offset_map", "pred_boxes"):
        torch.testing.assert_close(out[key], plain[key], atol=1e-12, rtol=1e-10)
    assert not torch.allclose(other.score_map, rgb_model(*inputs(c=6)).score_map)  # X is used
    dual.train()
    dual(*inputs(), search_box=torch.tensor([[0.3, 0.3, 0.3, 0.3]] * 2)).loss.backward()
    assert dual.fusion["0"].attn.proj.weight.grad.abs().sum() > 0 and dual.fusion["0"].mlp.fc2.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fusion_init must be one of .*got 'zeros'"):
        OSTrackRGBX.from_rgb(rgb_model, "dual_stream", fusion_init="zeros")


def test_prompt_from_rgb_starts_as_rgb_model(rgb_model):
    prompt = OSTrackRGBX.from_rgb(rgb_model, "prompt", prompt_dim=4).eval()
    assert torch.equal(prompt.prompt.patch_embed.proj.weight, rgb_model.backbone.patch_embed.proj.weight)
    z, x = inputs()
    with torch.no_grad():
        a = prompt(z, x)
        b = rgb_model(z[:, :3], x[:, :3])
        with torch.no_grad():
            prompt.prompt.blocks["0"].up.weight.normal_()
        c = prompt(z, x)
    torch.testing.assert_close(a.score_map, b.score_map)
    assert not torch.allclose(c.score_map, b.score_map)  # once the prompts move, X changes the output


def test_from_rgb_rejects_bad_sources_and_shape_overrides(rgb_model):
    dual = OSTrackRGBX.from_rgb(rgb_model, "dual_stream")
    with pytest.raises(ValueError, match="mode='rgb'"):
        OSTrackRGBX.from_rgb(dual, "prompt")
    with pytest.raises(ValueError, match="search_size"):
        OSTrackRGBX.from_rgb(rgb_model, "prompt", search_size=128)


# --- checkpoints ------------------------------------------------------------------------------------------------------
def ostrack_style_state(model: OSTrackRGBX) -> dict:
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    d = model.config.embed_dim
    sd["backbone.cls_token"] = torch.zeros(1, 1, d)  # present (unused) in OSTrack checkpoints
    sd["backbone.pos_embed"] = torch.zeros(1, 197, d)  # the 14x14 + cls ImageNet grid
    sd["backbone.head.weight"] = torch.zeros(10, d)  # a timm classifier left in the backbone
    return sd


def test_load_ostrack_checkpoint_gives_identical_outputs(rgb_model, tmp_path):
    path = tmp_path / "OSTrack_ep0300.pth.tar"
    torch.save({"net": ostrack_style_state(rgb_model), "epoch": 300}, path)
    torch.manual_seed(123)
    fresh = OSTrackRGBX(tiny_cfg()).eval()
    report = load_rgb_checkpoint(fresh, path)
    assert report.ok, report
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert sorted(report.ignored) == ["backbone.cls_token", "backbone.head.weight", "backbone.pos_embed"]
    z, x = inputs(c=3)
    with torch.no_grad():
        torch.testing.assert_close(fresh(z, x).score_map, rgb_model(z, x).score_map, rtol=0, atol=0)
    assert state_equal(fresh.state_dict(), rgb_model.state_dict())


def test_load_reports_unexpected_mismatched_and_missing(rgb_model, tmp_path):
    sd = ostrack_style_state(rgb_model)
    sd["backbone.extra_adapter.weight"] = torch.zeros(3)
    sd["box_head.conv5_ctr.weight"] = torch.zeros(1, 4, 1, 1)  # wrong shape
    del sd["backbone.norm.bias"]
    sd = {f"module.{k}": v for k, v in sd.items()}  # DDP prefix is stripped
    path = tmp_path / "ckpt.pth"
    torch.save({"net": sd}, path)
    fresh = OSTrackRGBX(tiny_cfg())
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match="extra_adapter"):
        load_rgb_checkpoint(fresh, path, strict=True)
    assert state_equal(before, fresh.state_dict())  # strict failure changes nothing
    report = load_rgb_checkpoint(fresh, path)
    assert report.unexpected == ["backbone.extra_adapter.weight"]
    assert [m.split(":")[0] for m in report.mismatched] == ["box_head.conv5_ctr.weight"]
    assert report.missing == ["backbone.norm.bias"]
    assert not report.ok
    assert torch.equal(fresh.backbone.norm.weight, rgb_model.backbone.norm.weight)
    assert torch.equal(fresh.box_head.conv5_ctr.weight, before["box_head.conv5_ctr.weight"])


class TrainerSettings:
    def __init__(self) -> None:
        self.payload = "arbitrary object"


def test_trainer_file_with_pickled_settings_loads(rgb_model, tmp_path):
    """OSTrack's trainer pickles a settings object next to 'net': the weights load, the object stays inert."""
    path = tmp_path / "OSTrack_ep0300.pth.tar"
    torch.save({"net": rgb_model.state_dict(), "settings": TrainerSettings(), "epoch": 300}, path)
    fresh = OSTrackRGBX(tiny_cfg())
    assert load_rgb_checkpoint(fresh, path).ok
    assert state_equal(fresh.state_dict(), rgb_model.state_dict())
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_rgb_checkpoint(OSTrackRGBX(tiny_cfg()), tmp_path / "absent.pth")


def test_single_pos_embed_is_interpolated_to_both_grids(rgb_model, tmp_path):
    d = rgb_model.config.embed_dim
    sd = {k: v for k, v in rgb_model.state_dict().items() if not k.startswith("backbone.pos_embed_")}
    grid = torch.randn(1, 1 + 16, d)  # cls + 4x4 grid: equals the search grid, so pos_embed_x = grid tokens exactly
    sd["backbone.pos_embed"] = grid
    path = tmp_path / "mae_like.pth"
    torch.save({"net": sd}, path)
    fresh = OSTrackRGBX(tiny_cfg())
    report = load_rgb_checkpoint(fresh, path)
    assert report.ok and len(report.interpolated) == 2 and report.ignored == ["backbone.pos_embed"]
    torch.testing.assert_close(fresh.backbone.pos_embed_x.detach(), grid[:, 1:])
    img = grid[:, 1:].reshape(1, 4, 4, d).permute(0, 3, 1, 2)
    want_z = torch.nn.functional.interpolate(img, size=(2, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(fresh.backbone.pos_embed_z.detach(), want_z.flatten(2).transpose(1, 2))


def test_load_rgb_checkpoint_into_dual_stream_fills_both_streams(rgb_model, tmp_path):
    path = tmp_path / "rgb.pth.tar"
    torch.save({"net": rgb_model.state_dict()}, path)
    dual = OSTrackRGBX(tiny_cfg(mode="dual_stream"))
    assert load_rgb_checkpoint(dual, path).ok
    rgb_backbone = sub_state(rgb_model.state_dict(), "backbone.")
    assert state_equal(sub_state(dual.state_dict(), "backbone_x."), rgb_backbone)
    assert state_equal(sub_state(dual.state_dict(), "fusion.2."), sub_state(rgb_backbone, "blocks.2."))
    assert not dual.box_head.conv1_ctr[0].weight.requires_grad


def test_safetensors_round_trip(rgb_model, tmp_path):
    dual = OSTrackRGBX.from_rgb(rgb_model, "dual_stream", fusion_layers=(1, 3)).eval()
    with torch.no_grad():
        dual.backbone_x.norm.weight.add_(0.5)
    save_tracker(dual, tmp_path / "tiny")
    assert {p.name for p in (tmp_path / "tiny").iterdir()} == {"config.json", "model.safetensors"}
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    assert cfg["mode"] == "dual_stream" and cfg["fusion_layers"] == [1, 3] and cfg["variant"] == "tiny"
    loaded = load_tracker(tmp_path / "tiny").eval()
    assert loaded.config == dual.config
    assert state_equal(loaded.state_dict(), dual.state_dict())
    z, x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(z, x).score_map, dual(z, x).score_map, rtol=0, atol=0)
    assert not loaded.box_head.conv1_ctr[0].weight.requires_grad
