"""The tracker-architecture registry: a new architecture is one class registered under a mode, and everything else
(building, RGB conversion, parameter roles, prior scope, checkpoints, inference, SRFT fine-tuning) works through it."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.tracking import OSTrackRGBX, Tracker, TrackerConfig, load_tracker, save_tracker
from srft_peft.tracking.architectures import ARCHITECTURES, TrackerArchitecture, register_architecture
from srft_peft.tracking.architectures.rgb import RGBArchitecture
from srft_peft.tracking.train.methods import prior_scope_fields

SIZES = {"variant": "tiny", "template_size": 32, "search_size": 64}


class XGate(RGBArchitecture):
    """Toy RGB-X early fusion: the RGB tracker on ``rgb + gate * x`` with one learnable gate per channel, zero at
    conversion (so the converted model is the RGB tracker)."""

    input_channels = (6,)
    role_prefixes = (("x_gate", "fusion"), *RGBArchitecture.role_prefixes)
    trained_roles = ("patch_embed", "backbone", "fusion")

    def build(self, model):
        model.x_gate = nn.Parameter(torch.full((1, 3, 1, 1), 0.5))

    @torch.no_grad()
    def init_from_rgb(self, model, rgb, fusion_init):
        model.x_gate.zero_()

    def features(self, model, template, search, kept):
        mix = lambda t: t[:, :3] + model.x_gate * t[:, 3:]  # noqa: E731
        return super().features(model, mix(template), mix(search), kept)


@pytest.fixture
def x_gate():
    register_architecture("x_gate")(XGate)
    yield "x_gate"
    del ARCHITECTURES["x_gate"]


def _pairs(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([[0.3, 0.35, 0.25, 0.2]]).repeat(n, 1)
    return {"template": torch.randn(n, 6, 32, 32, generator=g), "search": torch.randn(n, 6, 64, 64, generator=g),
            "search_box": box}


def test_a_registered_toy_architecture_is_built_converted_and_fine_tuned_one_step_with_srft(x_gate, tmp_path):
    torch.manual_seed(0)
    rgb = OSTrackRGBX(TrackerConfig(mode="rgb", **SIZES)).eval()
    model = OSTrackRGBX.from_rgb(rgb, x_gate)
    assert model.x_gate.requires_grad and not any(p.requires_grad for p in model.box_head.parameters())
    roles = model.architecture.parameter_roles(model)
    assert roles["x_gate"] == "fusion" and roles["backbone.patch_embed.proj.weight"] == "patch_embed"
    batch = _pairs()
    with torch.no_grad():  # gate zero: the converted model is the RGB tracker whatever X is
        want = rgb(batch["template"][:, :3], batch["search"][:, :3]).pred_boxes
        torch.testing.assert_close(model.eval()(batch["template"], batch["search"]).pred_boxes, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape \(B, 6, 64, 64\) for mode 'x_gate'"):
        model(batch["template"], batch["search"][:, :3])

    model.train()
    srft = get_srft_model(model, SRFTConfig(total_steps=4))
    assert "x_gate" in srft.regularized_parameters
    srft.estimate_prior([_pairs(seed=1)], progress=False)
    optimizer = torch.optim.AdamW([p for p in srft.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    srft.attach(optimizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    srft(**batch).loss.backward()
    assert model.x_gate.grad.abs().sum() > 0
    optimizer.step()
    after = model.state_dict()
    assert not torch.equal(after["x_gate"], before["x_gate"])
    assert not torch.equal(after["backbone.blocks.0.attn.qkv.weight"], before["backbone.blocks.0.attn.qkv.weight"])
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("box_head."))  # frozen by its roles

    # the rest of the toolkit goes through the architecture: prior scope, checkpoints, inference
    assert prior_scope_fields(model, "all", "identity") == {}
    with pytest.raises(ValueError, match="prior_scope='pretrained' needs a dual-stream tracker, got mode='x_gate'"):
        prior_scope_fields(model, "pretrained", "identity")
    loaded = load_tracker(save_tracker(model, tmp_path / "tracker"))
    assert loaded.config.mode == x_gate and torch.equal(loaded.x_gate, model.x_gate)
    assert Tracker(model).in_chans == (6,)


def test_an_unknown_mode_lists_the_registered_architectures(x_gate):
    with pytest.raises(ValueError, match=r"mode must be one of the registered tracker architectures "
                                         r"\['dual_stream', 'prompt', 'rgb', 'x_gate'\], got 'late_fusion'"):
        TrackerConfig(mode="late_fusion", **SIZES)


def test_registration_refuses_a_taken_name_unknown_roles_and_a_non_architecture(x_gate):
    with pytest.raises(ValueError, match="'x_gate' is already registered"):
        register_architecture("x_gate")(XGate)
    bad_roles = type("BadRoles", (RGBArchitecture,), {"role_prefixes": (("x_gate", "gate"),)})
    with pytest.raises(ValueError, match=r"unknown roles \['gate'\]"):
        register_architecture("bad_roles")(bad_roles)
    with pytest.raises(TypeError, match="needs a TrackerArchitecture subclass"):
        register_architecture("not_one")(object)
    assert "bad_roles" not in ARCHITECTURES and "not_one" not in ARCHITECTURES


def test_every_parameter_of_the_built_in_architectures_has_one_role():
    for mode in ("rgb", "dual_stream", "prompt"):
        model = OSTrackRGBX(TrackerConfig(mode=mode, **SIZES))
        roles = model.architecture.parameter_roles(model)
        assert set(roles) == set(model.state_dict())
        trains = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trains == {n for n, _ in model.named_parameters() if roles[n] in model.architecture.trained_roles}
    dual = OSTrackRGBX(TrackerConfig(mode="dual_stream", **SIZES))
    assert dual.architecture.names_with_roles(dual, ("head",)) == [n for n, _ in dual.named_parameters()
                                                                  if n.startswith("box_head.")]


def test_a_key_outside_every_role_prefix_is_an_error():
    class Unmapped(TrackerArchitecture):
        def build(self, model):
            model.extra = nn.Linear(2, 2)

    register_architecture("unmapped")(Unmapped)
    try:
        with pytest.raises(ValueError, match="state-dict key 'extra.weight' matches none of its role_prefixes"):
            OSTrackRGBX(TrackerConfig(mode="unmapped", **SIZES))
    finally:
        del ARCHITECTURES["unmapped"]
