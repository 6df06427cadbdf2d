"""``srft-peft inspect``: through ``main([...])`` and once as a separate process, without the model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from checkpoint_helpers import hub_cache
from huggingface_hub import constants

from srft_peft.checkpoint import CONFIG_NAME, significance_path
from srft_peft.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_prints_header_and_table(saved: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(saved)]) == 0
    out = capsys.readouterr().out
    fingerprint = json.loads((saved / CONFIG_NAME).read_text())["fingerprint"]
    for text in ("srft-peft 0.1.0, format 2", "base model      Tiny (Tiny)", "kfac, prior_rank=3",
                 "16 examples in 2 batches, objective output_norm", fingerprint, "step 1, v for every parameter",
                 "7 tensors, 152 elements (2 kfac, 5 diagonal)"):
        assert text in out, text
    rows = {line.split()[0]: line.split() for line in out.splitlines()[-7:]}
    assert rows["fc1.weight"][1:4] == ["kfac", "3x3", rows["fc1.weight"][3]]
    assert rows["fc1.weight"][-2:] == ["48", "kfac"]
    assert rows["pos"][1] == "diagonal" and rows["pos"][-1] == "per_example"
    assert rows["norm.bias"][-2:] == ["8", "per_example"]


def test_inspect_plot_writes_a_png(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "significance.png"
    assert main(["inspect", str(saved), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot written to {png}" in capsys.readouterr().out


def test_inspect_a_cached_hub_repo_offline(saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_cache(tmp_path, "someone/tiny-significance", saved)
    assert main(["inspect", "someone/tiny-significance", "--cache-dir", str(tmp_path)]) == 0
    assert "checkpoint      someone/tiny-significance (" in capsys.readouterr().out
    assert main(["inspect", "someone/not-cached", "--cache-dir", str(tmp_path)]) == 2
    assert "offline mode is on" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    ([], "usage: srft-peft"),
    (["inspect"], "the following arguments are required: DIR_OR_REPO"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["inspect", "/no/such/folder"], "srft-peft: error: no folder '/no/such/folder'"),
])
def test_bad_usage_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: (d / CONFIG_NAME).write_text("{oops"), "srft_config.json: malformed JSON"),
    (lambda d: significance_path(d).rename(d / "significance.pt"), "pickle files are not loaded"),
    (lambda d: significance_path(d).write_bytes(b"\0" * 3), "not a readable safetensors file"),
])
def test_bad_checkpoint_exits_2(saved: Path, tmp_path: Path, corrupt, message: str,
                                capsys: pytest.CaptureFixture) -> None:
    for f in saved.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    corrupt(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.subprocess
def test_module_entry_point_runs_as_a_process(saved: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "srft_peft.cli", "inspect", str(saved)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fingerprint" in done.stdout and "fc2.weight" in done.stdout
