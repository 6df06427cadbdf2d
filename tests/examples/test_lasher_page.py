"""docs/lasher.md ("Fine-tune OSTrack on LasHeR"): its commands, run as written (sizes and paths aside) on a small
LasHeR-format folder by scripts/lasher_smoke.py."""

from __future__ import annotations

import importlib.util
import json

import pytest

from .conftest import REPO


def _smoke():
    spec = importlib.util.spec_from_file_location("lasher_smoke", REPO / "scripts" / "lasher_smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_has_the_one_and_n_gpu_commands_and_only_sizes_and_paths_change(tmp_path):
    smoke = _smoke()
    commands = smoke.page_commands()
    assert len(commands) == 4
    one, many, evaluate, rgbt234 = commands
    assert one[:2] == ["python", "examples/finetune_rgbt.py"]
    assert many[:5] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "8"]
    assert "-m" in evaluate and "srft_peft.tracking.evaluate" in evaluate and "rgbt234" in rgbt234
    for argv in commands:
        cmd = smoke.smoke_command(argv, tmp_path, tmp_path / "tracker")
        assert not any(a.startswith(("/data/", "/ckpt/")) for a in cmd), cmd
        assert "--tracker-preset" not in cmd and "bf16" not in cmd
        # every flag of the page is still there (only --tracker-preset, which names an OSTrack-size model, is dropped)
        assert {a for a in argv if a.startswith("--")} - {"--tracker-preset"} <= set(cmd)
    launched = smoke.smoke_command(many, tmp_path, tmp_path / "tracker")
    assert launched[launched.index("--num_processes") + 1] == "2"
    assert launched[launched.index("--output-dir") + 1] == str(tmp_path / "outputs" / "lasher_srft_8gpu")


@pytest.mark.distributed
@pytest.mark.subprocess
def test_the_page_commands_run_on_a_small_lasher_folder(tmp_path, example_env):
    ran = _smoke().run_page(tmp_path, env=example_env)
    assert len(ran) == 4
    one = json.loads((tmp_path / "outputs" / "lasher_srft" / "results.json").read_text())
    many = json.loads((tmp_path / "outputs" / "lasher_srft_8gpu" / "results.json").read_text())
    assert one["num_processes"] == 1 and many["num_processes"] == 2 and one["dataset"] == "lasher"
    assert one["validation"]["from_train"] == 1 and len(one["validation"]["history"]) == 3  # steps 0, 1, 2
    assert (tmp_path / "outputs" / "lasher_srft" / "val_sequences.txt").read_text().split() == ["seq01"]
    evaluated = json.loads((tmp_path / "outputs" / "lasher_srft_8gpu" / "eval" / "results.json").read_text())
    assert evaluated["num_processes"] == 2 and evaluated["sequences"] == 2
    assert evaluated["per_sequence"] == many["per_sequence"]["test"]  # the same model, the same 6 frames
    rgbt234 = tmp_path / "outputs" / "lasher_srft" / "eval_rgbt234"
    assert {"MPR", "MSR"} <= set(json.loads((rgbt234 / "results.json").read_text())["metrics"])
    assert sorted(p.name for p in (rgbt234 / "model").glob("*.txt")) == ["model_seq00.txt", "model_seq01.txt"]
