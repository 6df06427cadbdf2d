"""Bad inputs of the tracking toolkit: each error names the bad file or value, and nothing is created or changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from srft_peft.tracking import OSTrackRGBX, PartialLoadError, load_rgb_checkpoint, load_tracker, save_tracker
from srft_peft.tracking.datasets import load_lasher, read_boxes
from srft_peft.tracking.evaluation import load_results
from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx, load_pretrained_rgb
from tests.tracking.test_model import TX, TZ, ostrack_style_state, tiny_cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_caches(tmp_path, monkeypatch):
    """Demo data and trackers go to tmp_path: a regression that got past validation would otherwise fill ~/.cache."""
    monkeypatch.setenv("SRFT_DEMO_ROOT", str(tmp_path / "demo_cache"))
    monkeypatch.setenv("SRFT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def rgb_model() -> OSTrackRGBX:
    torch.manual_seed(0)
    return OSTrackRGBX(tiny_cfg()).eval()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _lasher_data(root: Path, frames: int = 2) -> Path:
    """``root/{train,test}/seq`` in the LasHeR layout, ``frames`` frames of 16 x 12 px."""
    for split in ("train", "test"):
        d = root / split / "seq"
        for sub, prefix in (("visible", "v"), ("infrared", "i")):
            (d / sub).mkdir(parents=True)
            for i in range(frames):
                Image.fromarray(np.full((12, 16, 3), 80, np.uint8)).save(d / sub / f"{prefix}{i:06d}.jpg")
        for name in ("visible.txt", "infrared.txt"):
            (d / name).write_text("".join("4,3,6,5\n" for _ in range(frames)))
    return root


def _checkpoint_folder(folder: Path, step: int = 2) -> Path:
    """The files of an accelerate ``save_state`` folder (model, optimizer, scheduler, RNG) + trainer_state.json."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(3)}, str(folder / "model.safetensors"))
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        torch.save({"state": torch.ones(2)}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# --pretrained: checkpoint files and tracker folders
# ---------------------------------------------------------------------------------------------------------------------
def test_pretrained_checkpoint_with_missing_keys_is_an_error_naming_file_counts_and_keys(rgb_model, tmp_path):
    sd = {k: v for k, v in ostrack_style_state(rgb_model).items() if not k.startswith("backbone.blocks.")}
    sd["backbone.adapter.weight"] = torch.zeros(3)
    missing = sum(k.startswith("backbone.blocks.") for k in rgb_model.state_dict())
    path = tmp_path / "wrong_variant.pth.tar"
    torch.save({"net": sd}, path)
    with pytest.raises(PartialLoadError) as info:
        load_pretrained_rgb(str(path), "tiny", TZ, TX)
    message = str(info.value)
    assert "wrong_variant.pth.tar" in message and f"{missing} missing (backbone.blocks.0." in message
    assert "1 unexpected (backbone.adapter.weight)" in message and "--allow-partial-load" in message
    # Opting in loads what matches and warns with the same summary.
    with pytest.warns(UserWarning, match=f"{missing} missing"):
        model, _ = load_pretrained_rgb(str(path), "tiny", TZ, TX, allow_partial_load=True)
    assert torch.equal(model.backbone.norm.weight, rgb_model.backbone.norm.weight)


def test_strict_load_leaves_the_model_unchanged_and_names_the_file(rgb_model, tmp_path):
    sd = ostrack_style_state(rgb_model)
    del sd["backbone.norm.bias"]
    path = tmp_path / "no_norm_bias.pth"
    torch.save({"net": sd}, path)
    fresh = OSTrackRGBX(tiny_cfg())
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(PartialLoadError, match=r"no_norm_bias\.pth: 1 missing \(backbone\.norm\.bias\)"):
        load_rgb_checkpoint(fresh, path, strict=True)
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_ostrack_checkpoint_with_unused_keys_loads_without_opt_in(rgb_model, tmp_path):
    path = tmp_path / "OSTrack_ep0300.pth.tar"
    torch.save({"net": ostrack_style_state(rgb_model)}, path)  # + cls_token, ImageNet pos_embed, classifier head
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, desc = load_pretrained_rgb(str(path), "tiny", TZ, TX)
    assert desc == str(path)
    assert all(torch.equal(v, rgb_model.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("config.json", b"{truncated", r"config\.json: not a valid JSON tracker config"),
        ("config.json", b'{"model_type": "srft_peft.OSTrackRGBX", "variant": "huge"}', r"config\.json: invalid tracker"),
        ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":", r"model\.safetensors: not a readable"),
    ],
)
def test_broken_pretrained_folder_names_the_file(rgb_model, tmp_path, name, content, match):
    folder = save_tracker(rgb_model, tmp_path / "tracker")
    (folder / name).write_bytes(content)
    with pytest.raises(ValueError, match=match) as info:
        load_pretrained_rgb(str(folder))
    assert str(folder / name) in str(info.value)
    with pytest.raises(ValueError, match=match):
        load_tracker(folder)


# ---------------------------------------------------------------------------------------------------------------------
# Ground-truth encodings
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("encoding", "match"), [("utf-16", "looks like UTF-16"), ("latin-1", r"not UTF-8 text \(byte 0xe9 at offset 13")]
)
def test_non_utf8_ground_truth_names_the_file(tmp_path, encoding, match):
    d = _lasher_data(tmp_path / "LasHeR") / "train" / "seq"
    text = "4,3,6,5\n# caf\u00e9\n" if encoding == "latin-1" else "4,3,6,5\n4,3,6,5\n"
    (d / "visible.txt").write_bytes(text.encode(encoding))
    with pytest.raises(ValueError, match=match) as info:
        load_lasher(d.parent)
    assert str(d / "visible.txt") in str(info.value) and "re-save it as UTF-8" in str(info.value)
    with pytest.raises(ValueError, match=match):
        read_boxes(d / "visible.txt")


def test_non_utf8_result_values_name_the_file(tmp_path):
    (tmp_path / "seq.txt").write_text("4,3,6,5\n4,3,6,5\n")
    (tmp_path / "seq_confidence.value").write_bytes("1.0\n0.5\n".encode("utf-16"))
    with pytest.raises(ValueError, match="looks like UTF-16") as info:
        load_results(tmp_path, ["seq"])
    assert str(tmp_path / "seq_confidence.value") in str(info.value)


# ---------------------------------------------------------------------------------------------------------------------
# finetune_rgbx: bad inputs are reported before the output folder is created
# ---------------------------------------------------------------------------------------------------------------------
def test_missing_data_root_creates_no_output_folder(tmp_path, accelerate_state):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        finetune_rgbx(FinetuneConfig(data_root=str(tmp_path / "no_such_dataset"), output_dir=str(out), steps=1))
    assert not out.exists()


def test_partial_pretrained_checkpoint_creates_no_output_folder(rgb_model, tmp_path, accelerate_state):
    sd = {k: v for k, v in rgb_model.state_dict().items() if not k.startswith("box_head.")}
    path = tmp_path / "backbone_only.pth"
    torch.save({"net": sd}, path)
    out = tmp_path / "out"
    cfg = FinetuneConfig(data_root=str(_lasher_data(tmp_path / "data")), pretrained=str(path), template_size=TZ,
                         search_size=TX, output_dir=str(out), steps=1, batch_size=2)
    with pytest.raises(PartialLoadError, match=r"backbone_only\.pth: \d+ missing \(box_head\."):
        finetune_rgbx(cfg)
    assert not out.exists()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("trainer_state.json", r"trainer_state\.json is not a JSON object with a 'step'"),
        ("model.safetensors", r"model\.safetensors is not a readable safetensors file"),
        ("optimizer.bin", r"optimizer\.bin is damaged"),
    ],
)
def test_resume_from_a_corrupt_checkpoint_names_the_file(tmp_path, accelerate_state, damage, match):
    ckpt = _checkpoint_folder(tmp_path / "ckpt" / "step_000002")
    data = (ckpt / damage).read_bytes()
    (ckpt / damage).write_bytes(data[: len(data) // 2])  # truncated, as by a crash or a full disk
    before = _files(tmp_path / "ckpt")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match) as info:
        finetune_rgbx(FinetuneConfig(resume=str(ckpt), output_dir=str(out), steps=4))
    assert str(ckpt / damage) in str(info.value)
    assert not out.exists() and _files(tmp_path / "ckpt") == before


def test_resume_latest_with_an_unfinished_checkpoint_names_the_folder(tmp_path, accelerate_state):
    out = tmp_path / "out"
    ckpt = _checkpoint_folder(out / "checkpoints" / "step_000004", step=4)
    (ckpt / "trainer_state.json").unlink()  # save_state was interrupted before the step was written
    before = _files(out)
    with pytest.raises(FileNotFoundError, match=r"step_000004.*no .*trainer_state\.json"):
        finetune_rgbx(FinetuneConfig(resume="latest", output_dir=str(out), steps=8))
    assert _files(out) == before  # no prior, model, log or results written


def test_resume_step_must_be_a_non_negative_integer(tmp_path, accelerate_state):
    ckpt = _checkpoint_folder(tmp_path / "ckpt")
    (ckpt / "trainer_state.json").write_text('{"step": "2"}')
    with pytest.raises(ValueError, match=r"trainer_state\.json: 'step' must be a non-negative integer, got '2'"):
        finetune_rgbx(FinetuneConfig(resume=str(ckpt), output_dir=str(tmp_path / "out"), steps=4))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# The example scripts
# ---------------------------------------------------------------------------------------------------------------------
def _run_example(script: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")  # + the tmp caches
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


@pytest.mark.subprocess
@pytest.mark.parametrize("script", ["finetune_rgbt.py", "pretrain_rgb.py"])
def test_example_with_a_missing_data_root_creates_no_output_folder(tmp_path, script):
    out = tmp_path / "out"
    proc = _run_example(script, "--data-root", str(tmp_path / "missing_root"), "--output-dir", str(out))
    assert proc.returncode != 0
    assert "FileNotFoundError" in proc.stderr and str(tmp_path / "missing_root") in proc.stderr
    assert not out.exists()


def test_tracker_preset_builds_the_checkpoint_with_candidate_elimination(rgb_model, tmp_path, monkeypatch):
    """--tracker-preset chooses OSTrack's configuration (CE included) for a .pth.tar; an unknown one is refused."""
    from srft_peft.tracking import model as tracking_model
    from srft_peft.tracking.train import build_parser, config_from_args

    monkeypatch.setitem(tracking_model.PRESETS, "tiny_ce", {**tiny_cfg().to_dict(), "ce_locations": (1,),
                                                            "ce_keep_ratio": (0.5,), "mode": "rgb"})
    path = tmp_path / "OSTrack_ce_ep0300.pth.tar"
    torch.save({"net": ostrack_style_state(rgb_model)}, path)
    plain, _ = load_pretrained_rgb(str(path), progress=False)
    ce, _ = load_pretrained_rgb(str(path), progress=False, preset="tiny_ce")
    assert plain.config.ce_locations == () and ce.config.ce_locations == (1,)
    torch.testing.assert_close(ce.state_dict(), plain.state_dict(), rtol=0, atol=0)  # same weights, CE on top
    args = build_parser("rgbt").parse_args(["--pretrained", str(path), "--tracker-preset", "tiny_ce"])
    assert config_from_args(args).tracker_preset == "tiny_ce"
    with pytest.raises(ValueError, match=r"tracker_preset must be one of .* got 'ostrack999'"):
        FinetuneConfig(pretrained=str(path), tracker_preset="ostrack999", output_dir=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
