"""OSTrack's training recipe as config: augmentations, per-group learning rates, drop path, the step schedule, the
candidate-elimination keep-ratio warm-up, the size-map clamp and the presets (docs/tracking.md, "OSTrack's recipe")."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srft_peft import SRFTConfig, get_srft_model
from srft_peft.tracking import OSTrackRGBX, TrackerConfig
from srft_peft.tracking.augment import GRAY_WEIGHTS, draw_pair_augmentation
from srft_peft.tracking.datasets import Sequence
from srft_peft.tracking.layers import MAP_EPS, CenterHead
from srft_peft.tracking.sampling import IMAGENET_MEAN, IMAGENET_STD, TrackingPairDataset
from srft_peft.tracking.train import FinetuneConfig
from srft_peft.tracking.train.common import ce_keep_ratio_at, cosine_lr_lambda, step_lr_lambda
from srft_peft.tracking.train.config import RECIPE_FIELDS, RECIPE_PRESETS, RECIPE_SOURCES
from srft_peft.tracking.train.finetune import optimizer_groups
from srft_peft.tracking.train.methods import build_finetune_model

REPO = Path(__file__).resolve().parents[2]
TINY_SIZES = {"template_size": 32, "search_size": 64}
TINY = {"variant": "tiny", **TINY_SIZES}


# --- augmentations ------------------------------------------------------------------------------------------------------
def _rates(n: int, **probs: float) -> dict[str, float]:
    rng = np.random.default_rng(1234)
    draws = [draw_pair_augmentation(rng, **{"flip_prob": 0.0, "crop_flip_prob": 0.0, "gray_prob": 0.0,
                                            "brightness_jitter": 0.0, **probs}) for _ in range(n)]
    return {"gray": np.mean([d.gray for d in draws]),
            "template_flip": np.mean([d.flip[0] for d in draws]),
            "search_flip": np.mean([d.flip[1] for d in draws]),
            "same_flip": np.mean([d.flip[0] == d.flip[1] for d in draws]),
            "brightness_mean": np.mean([d.brightness for d in draws]),
            "brightness_min": np.min([d.brightness for d in draws]),
            "brightness_max": np.max([d.brightness for d in draws])}


def _within(rate: float, p: float, n: int) -> bool:
    """The observed rate of n Bernoulli(p) draws is within 4 binomial standard deviations of p."""
    return abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n)


N = 4000


def test_joint_flip_flips_template_and_search_together_with_its_probability():
    r = _rates(N, flip_prob=0.3)
    assert _within(r["template_flip"], 0.3, N) and r["same_flip"] == 1.0


def test_crop_flips_are_independent_per_crop():
    r = _rates(N, crop_flip_prob=0.2)
    assert _within(r["template_flip"], 0.2, N) and _within(r["search_flip"], 0.2, N)
    assert _within(r["same_flip"], 0.2**2 + 0.8**2, N)  # independent draws agree with probability p^2 + (1 - p)^2


def test_ostrack_flips_combine_to_one_half_per_crop_independently():
    """OSTrack's joint flip (0.5) then per-crop flip (0.5): each crop flipped with probability 1/2, independently."""
    r = _rates(N, flip_prob=0.5, crop_flip_prob=0.5)
    assert _within(r["template_flip"], 0.5, N) and _within(r["search_flip"], 0.5, N)
    assert _within(r["same_flip"], 0.5, N)


def test_gray_probability_and_brightness_range():
    r = _rates(N, gray_prob=0.05, brightness_jitter=0.2)
    assert _within(r["gray"], 0.05, N)
    # uniform on [0.8, 1.2]: mean 1, SD 0.4 / sqrt(12) per draw, 2N draws
    assert abs(r["brightness_mean"] - 1.0) <= 4 * 0.4 / math.sqrt(12) / math.sqrt(2 * N)
    assert 0.8 <= r["brightness_min"] < 0.81 and 1.19 < r["brightness_max"] <= 1.2


def test_no_augmentation_draws_nothing():
    rng = np.random.default_rng(5)
    state = rng.bit_generator.state
    assert draw_pair_augmentation(rng, 0.0, 0.0, 0.0, 0.0) is None
    assert rng.bit_generator.state == state


def _asymmetric_sequence(tmp_path: Path, n: int = 6) -> Sequence:
    """Textured frames (so a flip is visible), the X frame different from the RGB frame."""
    rng = np.random.default_rng(0)
    rgb_paths, x_paths, gt = [], [], []
    for i in range(n):
        rgb = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        x = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
        rgb_paths.append(tmp_path / f"rgb{i}.png")
        x_paths.append(tmp_path / f"x{i}.png")
        Image.fromarray(rgb).save(rgb_paths[-1])
        Image.fromarray(x).save(x_paths[-1])
        gt.append([30 + 3 * i, 30, 20 + i, 16])
    return Sequence("tex", rgb_paths, x_paths, np.asarray(gt, float), modality="rgbt")


def _raw(crop: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN * 2).view(-1, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD * 2).view(-1, 1, 1) * 255
    return crop * std + mean


def test_the_same_flip_applies_to_rgb_x_and_the_box(tmp_path):
    """With flips only, every augmented crop is the plain crop (same seed) or its mirror image in all six channels,
    and its box is the plain box or the mirrored one (x -> 1 - x - w); both cases occur."""
    seq = _asymmetric_sequence(tmp_path)
    plain = TrackingPairDataset([seq], samples_per_epoch=24, seed=7, **TINY_SIZES)
    flipped = TrackingPairDataset([seq], samples_per_epoch=24, seed=7, flip_prob=0.5, crop_flip_prob=0.5, **TINY_SIZES)
    seen = set()
    for i in range(24):
        a, b = plain[i], flipped[i]
        for name in ("template", "search"):
            box, fbox = a[f"{name}_box"], b[f"{name}_box"]
            if torch.equal(b[name], a[name]):
                assert torch.equal(fbox, box)
                seen.add(False)
            else:
                assert torch.equal(b[name], a[name].flip(-1))  # RGB and X channels alike
                mirrored = torch.tensor([1 - box[0] - box[2], box[1], box[2], box[3]])
                torch.testing.assert_close(fbox, mirrored, rtol=0, atol=2 * 1.19e-7)  # one float32 rounding of 1 - x - w
                seen.add(True)
    assert seen == {False, True}


def test_gray_and_brightness_act_on_the_crop_pixels(tmp_path):
    """Gray: the RGB channels become their BT.601 luma, X is untouched; brightness: every channel times the factor."""
    seq = _asymmetric_sequence(tmp_path)
    plain = TrackingPairDataset([seq], samples_per_epoch=8, seed=3, **TINY_SIZES)
    gray = TrackingPairDataset([seq], samples_per_epoch=8, seed=3, gray_prob=1.0, **TINY_SIZES)
    bright = TrackingPairDataset([seq], samples_per_epoch=8, seed=3, brightness_jitter=0.2, **TINY_SIZES)
    # float32 tolerance: a de-normalisation and re-normalisation of values up to 255 (a few roundings of 255 * eps32)
    atol = 8 * 255 * 1.19e-7
    for i in range(4):
        a_raw = _raw(plain[i]["search"])
        g_raw = _raw(gray[i]["search"])
        luma = sum(w * a_raw[c] for c, w in enumerate(GRAY_WEIGHTS))
        for c in range(3):
            torch.testing.assert_close(g_raw[c], luma, rtol=0, atol=atol)
        torch.testing.assert_close(g_raw[3:], a_raw[3:], rtol=0, atol=atol)
        b_raw = _raw(bright[i]["search"])
        inside = (a_raw > 1) & (a_raw < 200)  # not clamped, not padding
        factor = (b_raw[inside] / a_raw[inside])
        assert 0.8 - 1e-5 <= factor.min() and factor.max() <= 1.2 + 1e-5
        assert factor.max() - factor.min() <= 1e-4  # one factor for the whole crop, RGB and X
        assert not math.isclose(float(factor.mean()), 1.0, abs_tol=1e-6)


def test_defaults_leave_the_pairs_unchanged(tmp_path):
    seq = _asymmetric_sequence(tmp_path)
    a = TrackingPairDataset([seq], samples_per_epoch=4, seed=2, **TINY_SIZES)
    b = TrackingPairDataset([seq], samples_per_epoch=4, seed=2, flip_prob=0.0, gray_prob=0.0, **TINY_SIZES)
    for i in range(4):
        assert all(torch.equal(a[i][k], b[i][k]) for k in a[i])


@pytest.mark.parametrize("field, value", [("flip_prob", 1.5), ("gray_prob", -0.1), ("crop_flip_prob", True),
                                          ("brightness_jitter", float("inf"))])
def test_bad_augmentation_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


# --- per-group learning rates -------------------------------------------------------------------------------------------
def _dual_stream() -> OSTrackRGBX:
    torch.manual_seed(0)
    return OSTrackRGBX.from_rgb(OSTrackRGBX(TrackerConfig(**TINY)), "dual_stream", fusion_init="identity")


def test_backbone_multiplier_sets_the_param_group_learning_rates():
    model = _dual_stream()
    groups = optimizer_groups(model, 4e-4, 1e-4, backbone_lr_multiplier=0.1)
    opt = torch.optim.AdamW(groups, lr=4e-4)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(lr_of) == len(names)  # every trainable parameter once
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert lr_of[id(p)] == (4e-4 * 0.1 if "backbone" in n else 4e-4), n
    assert any(n.startswith("fusion.") for n in names) and any(n.startswith("backbone_x.") for n in names)
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}  # no SRFT: every group decays


def test_multiplier_one_keeps_the_two_weight_decay_groups():
    groups = optimizer_groups(_dual_stream(), 2e-4, 1e-4)
    assert len(groups) == 1 and groups[0]["lr"] == 2e-4


def test_srft_attaches_to_an_optimizer_with_several_lr_groups():
    """SRFT's hooks run with four groups (two learning rates x decay / no decay); the regularized parameters have no
    weight decay, and one step changes the weights."""
    model = _dual_stream()
    srft = get_srft_model(model, SRFTConfig(target_modules=r".*\.mlp\.fc1", lambda_prior=0.0,
                                            total_steps=4))
    groups = optimizer_groups(srft, 1e-3, 1e-4, backbone_lr_multiplier=0.1, srft=srft)
    assert len(groups) == 4
    opt = torch.optim.AdamW(groups, lr=1e-3)
    srft.attach(opt)
    regularized = {id(t.param) for t in srft.regularized_targets}
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if any(id(p) in regularized for p in g["params"]))
    before = [p.detach().clone() for p in srft.parameters()]
    out = srft(torch.randn(2, 6, 32, 32), torch.randn(2, 6, 64, 64), search_box=torch.tensor([[0.4, 0.4, 0.2, 0.2]] * 2))
    out.loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, srft.parameters()))


# --- drop path ----------------------------------------------------------------------------------------------------------
def test_drop_path_is_active_in_training_and_the_identity_in_eval():
    rgb = OSTrackRGBX(TrackerConfig(**TINY))
    plain = OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init="copy")
    dropped = OSTrackRGBX.from_rgb(rgb, "dual_stream", fusion_init="copy", drop_path=0.3)
    z, x = torch.randn(4, 6, 32, 32), torch.randn(4, 6, 64, 64)
    plain.eval(), dropped.eval()
    assert torch.equal(dropped.forward_features(z, x), plain.forward_features(z, x))
    plain.train(), dropped.train()
    torch.manual_seed(0)
    first = dropped.forward_features(z, x)
    second = dropped.forward_features(z, x)
    assert not torch.equal(first, second)  # random per forward
    assert torch.equal(plain.forward_features(z, x), plain.forward_features(z, x))
    rates = [blk.drop_path1.drop_prob if hasattr(blk.drop_path1, "drop_prob") else 0.0 for blk in dropped.backbone.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3, abs=1e-12)  # linear in depth, as OSTrack's linspace
    # the fine-tune builds its model with the recipe's rate (FinetuneConfig.drop_path)
    for method in ("full", "prompt"):
        assert build_finetune_model(method, rgb, drop_path=0.1).config.drop_path == 0.1
    assert build_finetune_model("lora", rgb, drop_path=0.1).base_model.model.config.drop_path == 0.1


# --- schedules ----------------------------------------------------------------------------------------------------------
def test_step_schedule_drops_by_the_factor_at_80_percent():
    fn = step_lr_lambda(0, 300, 240 / 300, 0.1)
    assert [fn(0), fn(239), fn(240), fn(299)] == [1.0, 1.0, 0.1, 0.1]
    warm = step_lr_lambda(10, 100, 0.8, 0.1)
    assert [warm(0), warm(9), warm(10), warm(79), warm(80)] == [0.1, 1.0, 1.0, 1.0, 0.1]
    cos = cosine_lr_lambda(10, 100)
    assert cos(0) == 0.1 and cos(10) == 1.0 and cos(55) == pytest.approx(0.5, abs=1e-15)


def test_ce_keep_ratio_warm_up_points():
    """OSTrack-CE (300 epochs, start 20, warm 80, keep 0.7): 1 until 20, cosine to 0.7 at 100, then 0.7."""
    at = [ce_keep_ratio_at(t, 300, 20 / 300, 80 / 300, (0.7, 0.7, 0.7))[0] for t in (0, 19, 20, 60, 99, 100, 299)]
    expected = [1.0, 1.0, 1.0, 0.85, 0.7 + 0.3 * (1 + math.cos(math.pi * 79 / 80)) / 2, 0.7, 0.7]
    assert at == pytest.approx(expected, abs=1e-15)
    assert ce_keep_ratio_at(50, 300, 0.0, 0.0, (0.6, 0.8)) == (0.6, 0.8)  # no warm-up: the tracker's ratios


def test_the_keep_ratio_override_changes_training_forwards_only():
    m = OSTrackRGBX(TrackerConfig(**TINY, ce_locations=(1, 2), ce_keep_ratio=(0.5, 0.5)))
    z, x = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 64, 64)
    zeros = lambda t: int((t[:, 4:].abs().sum(-1) == 0).sum())  # noqa: E731  eliminated search tokens
    m.train()
    assert zeros(m.forward_features(z, x)) == 2 * 12
    m.set_ce_keep_ratio((1.0, 1.0))
    assert zeros(m.forward_features(z, x)) == 0
    m.eval()
    assert zeros(m.forward_features(z, x)) == 2 * 12
    with pytest.raises(ValueError, match="set_ce_keep_ratio"):
        m.set_ce_keep_ratio((1.0,))


# --- size map -----------------------------------------------------------------------------------------------------------
def test_size_map_is_clamped_like_the_score_map():
    head = CenterHead(16, 16).eval()
    with torch.no_grad():
        head.conv5_size.bias.fill_(12.0)  # sigmoid(12) > 1 - 1e-4
        head.conv5_ctr.bias.fill_(-12.0)
        score, size, _ = head(torch.zeros(1, 16, 4, 4))
    low, high = (torch.tensor(v, dtype=torch.float32) for v in (MAP_EPS, 1 - MAP_EPS))  # the clamp's float32 bounds
    assert torch.all(size == high) and torch.all(score == low)
    with torch.no_grad():
        head.conv5_size.bias.fill_(-12.0)
        _, size, _ = head(torch.zeros(1, 16, 4, 4))
    assert torch.all(size == low)


# --- presets ------------------------------------------------------------------------------------------------------------
# The published values, typed from the sources' files (see RECIPE_SOURCES).
OSTRACK_YAML = {"LR": 0.0004, "BACKBONE_MULTIPLIER": 0.1, "DROP_PATH_RATE": 0.1, "EPOCH": 300, "LR_DROP_EPOCH": 240,
                "CE_START_EPOCH": 20, "CE_WARM_EPOCH": 80, "DECAY_RATE": 0.1, "CENTER_JITTER": 3, "SCALE_JITTER": 0.25}
VIPT_YAML = {"LR": 0.0004, "BACKBONE_MULTIPLIER": 0.1, "DROP_PATH_RATE": 0.1, "EPOCH": 60, "LR_DROP_EPOCH": 48,
             "CE_START_EPOCH": 4, "CE_WARM_EPOCH": 16, "DECAY_RATE": 0.1, "CENTER_JITTER": 3, "SCALE_JITTER": 0.25}
# lib/train/base_functions.py: ToGrayscale(0.05), RandomHorizontalFlip(0.5) joint; ToTensorAndJitter(0.2),
# RandomHorizontalFlip_Norm(0.5) per crop.
AUGMENT = {"gray_prob": 0.05, "flip_prob": 0.5, "brightness_jitter": 0.2, "crop_flip_prob": 0.5}


@pytest.mark.parametrize("preset, yaml", [("ostrack256-ce", OSTRACK_YAML), ("vipt-rgbt", VIPT_YAML)])
def test_preset_values_are_the_published_ones(preset, yaml):
    recipe = FinetuneConfig(preset=preset, pretrained="OSTrack_ep0300.pth.tar").recipe
    expected = {"lr": yaml["LR"], "backbone_lr_multiplier": yaml["BACKBONE_MULTIPLIER"],
                "drop_path": yaml["DROP_PATH_RATE"], "lr_schedule": "step",
                "lr_drop_at": yaml["LR_DROP_EPOCH"] / yaml["EPOCH"], "lr_drop_factor": yaml["DECAY_RATE"],
                "ce_start_fraction": yaml["CE_START_EPOCH"] / yaml["EPOCH"],
                "ce_warm_fraction": yaml["CE_WARM_EPOCH"] / yaml["EPOCH"], "tracker_preset": "ostrack256_ce",
                "center_jitter": yaml["CENTER_JITTER"], "scale_jitter": yaml["SCALE_JITTER"], **AUGMENT}
    assert recipe == expected
    tracker = TrackerConfig.from_preset(recipe["tracker_preset"])
    assert tracker.ce_locations == (3, 6, 9) and tracker.ce_keep_ratio == (0.7, 0.7, 0.7)  # CE_LOC, CE_KEEP_RATIO


def test_demo_preset_is_the_old_recipe_and_explicit_fields_win():
    cfg = FinetuneConfig()
    assert cfg.preset == "demo" and cfg.learning_rate == 2e-4 and FinetuneConfig(method="prompt").learning_rate == 1e-3
    assert cfg.recipe == {**RECIPE_PRESETS["demo"]}
    assert cfg.recipe["backbone_lr_multiplier"] == 1.0 and cfg.recipe["drop_path"] == 0.0
    assert cfg.recipe["lr_schedule"] == "cosine" and cfg.recipe["flip_prob"] == 0.0
    tuned = FinetuneConfig(preset="ostrack256-ce", pretrained="x.pth.tar", lr=1e-4, flip_prob=0.0)
    assert tuned.learning_rate == 1e-4 and tuned.recipe["flip_prob"] == 0.0 and tuned.recipe["gray_prob"] == 0.05


@pytest.mark.parametrize("kwargs, field", [
    ({"preset": "ostrack"}, "preset"),
    ({"preset": "ostrack256-ce"}, "pretrained"),
    ({"lr_schedule": "linear"}, "lr_schedule"),
    ({"backbone_lr_multiplier": 0.0}, "backbone_lr_multiplier"),
    ({"drop_path": 1.0}, "drop_path"),
    ({"lr_drop_at": 0.0}, "lr_drop_at"),
    ({"ce_start_fraction": 0.5, "ce_warm_fraction": 0.6}, "ce_start_fraction"),
])
def test_bad_recipe_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**kwargs)


def test_every_preset_sets_every_recipe_field_and_names_its_source():
    assert set(RECIPE_PRESETS) == set(RECIPE_SOURCES)
    for values in RECIPE_PRESETS.values():
        assert tuple(values) == RECIPE_FIELDS or set(values) == set(RECIPE_FIELDS)


def test_the_docs_table_shows_the_preset_values():
    """docs/tracking.md's recipe table lists each preset's value of every recipe field (so the page stays true)."""
    text = (REPO / "docs" / "tracking.md").read_text().split("### OSTrack's recipe", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(RECIPE_PRESETS) + 1 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    assert set(rows) == set(RECIPE_FIELDS)
    for j, preset in enumerate(RECIPE_PRESETS):
        for name in RECIPE_FIELDS:
            value = RECIPE_PRESETS[preset][name]
            shown = rows[name][j]
            if value is None:
                assert shown.startswith("—"), (preset, name, shown)
            elif isinstance(value, float):
                number = float(re.match(r"[-+0-9.e]+", shown.replace("`", "")).group(0))
                assert number == pytest.approx(value, rel=2e-3), (preset, name, shown)  # 3 significant digits
            else:
                assert f"`{value}`" in shown, (preset, name, shown)


def test_command_line_flags_reach_the_recipe():
    from srft_peft.tracking.train.cli import build_parser, config_from_args

    args = build_parser("rgbt").parse_args(["--preset", "ostrack256-ce", "--pretrained", "OSTrack_ep0300.pth.tar",
                                            "--drop-path", "0.2", "--lr-schedule", "cosine", "--flip-prob", "0"])
    recipe = config_from_args(args).recipe
    assert recipe["drop_path"] == 0.2 and recipe["lr_schedule"] == "cosine" and recipe["flip_prob"] == 0.0
    assert recipe["backbone_lr_multiplier"] == 0.1 and recipe["tracker_preset"] == "ostrack256_ce"
    assert config_from_args(build_parser("rgbt").parse_args([])).recipe == RECIPE_PRESETS["demo"]
