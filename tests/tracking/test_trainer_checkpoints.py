"""Trainer checkpoints (OSTrack/DropTrack files with pickled ``settings`` objects) load without running pickled code."""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from srft_peft.tracking import OSTrackRGBX, TrackerConfig
from srft_peft.tracking.checkpoint_io import (
    CheckpointFormatError,
    InertObject,
    load_rgb_checkpoint,
    load_trainer_checkpoint,
    read_weights_only,
)

CALLS: list[str] = []  # anything pickled code would run appends here


def _record(message: str) -> str:
    CALLS.append(message)
    return message


class Settings:
    """Like OSTrack's ``ws_settings.Settings``: plain attributes, including a nested non-tensor object."""

    def __init__(self) -> None:
        self.script_name = "ostrack"
        self.env = argparse.Namespace(workspace_dir="/data/ws")
        self.cfg = {"CE_LOC": [3, 6, 9]}

    def __setstate__(self, state: dict) -> None:  # would run on a plain unpickle
        _record("Settings.__setstate__ ran")
        self.__dict__.update(state)


class CallsOnLoad:
    """Unpickling it calls a function of this module."""

    def __reduce__(self):
        return (_record, ("CallsOnLoad.__reduce__ ran",))


class ExecOnLoad:
    """Unpickling it runs ``exec`` on code that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


class SystemOnLoad:
    """Unpickling it calls ``os.system`` (a module torch never allows)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def model() -> OSTrackRGBX:
    torch.manual_seed(0)
    return OSTrackRGBX(TrackerConfig(variant="tiny", template_size=32, search_size=64)).eval()


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def _trainer_file(path: Path, model: OSTrackRGBX, **extra) -> Path:
    net = OrderedDict((f"module.{k}", v) for k, v in model.state_dict().items())  # DDP-wrapped, as saved by OSTrack
    torch.save({"net": net, "settings": Settings(), "epoch": 3, "net_type": "OSTrack", **extra}, path)
    return path


def test_trainer_file_loads_weights_and_runs_no_pickled_code(model, tmp_path):
    marker = tmp_path / "exec_marker"
    extra = {"hook": CallsOnLoad(), "payload": ExecOnLoad(marker), "loss": np.float64(0.25)}
    path = _trainer_file(tmp_path / "OSTrack_ep0003.pth.tar", model, **extra)

    state = read_weights_only(path)
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    obj, stand_ins = load_trainer_checkpoint(path)
    assert obj["epoch"] == 3 and obj["net_type"] == "OSTrack"
    settings = obj["settings"]
    assert isinstance(settings, InertObject) and settings.pickled_global.endswith("test_trainer_checkpoints.Settings")
    assert settings.state["script_name"] == "ostrack" and settings.state["cfg"] == {"CE_LOC": [3, 6, 9]}
    assert {n.rsplit(".", 1)[-1] for n in stand_ins} >= {"Settings", "Namespace", "_record", "exec", "scalar"}
    assert CALLS == []  # neither __setstate__ nor __reduce__'s function ran
    assert not marker.exists()  # exec never ran


def test_load_rgb_checkpoint_reads_a_trainer_file(model, tmp_path):
    path = _trainer_file(tmp_path / "ck.pth.tar", model)
    fresh = OSTrackRGBX(model.config)
    assert load_rgb_checkpoint(fresh, path).ok
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert CALLS == []


def test_blocked_module_is_refused_naming_it_without_ansi(model, tmp_path):
    marker = tmp_path / "system_marker"
    path = _trainer_file(tmp_path / "bad.pth.tar", model, payload=SystemOnLoad(marker))
    fresh = OSTrackRGBX(model.config)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointFormatError) as info:
        load_rgb_checkpoint(fresh, path)
    msg = str(info.value)
    assert "bad.pth.tar" in msg and ("posix.system" in msg or "nt.system" in msg)
    assert "\x1b" not in msg and "weights_only=False" not in msg and "add_safe_globals" not in msg
    assert "safetensors" in msg  # the safe recipe
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_legacy_format_with_a_class_is_refused_naming_the_class(model, tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"net": model.state_dict(), "settings": Settings()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointFormatError) as info:
        read_weights_only(path)
    msg = str(info.value)
    assert "legacy.pth" in msg and "test_trainer_checkpoints.Settings" in msg
    assert "\x1b" not in msg and "weights_only=False" not in msg and "safetensors.torch.save_file" in msg
    assert CALLS == []


def test_non_tensor_state_dict_entry_is_refused_naming_its_class(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"net": {"w": torch.ones(2), "extra": Settings()}}, path)
    with pytest.raises(CheckpointFormatError) as info:
        read_weights_only(path)
    assert "odd.pth" in str(info.value) and "'extra'" in str(info.value) and "Settings" in str(info.value)
    assert CALLS == []


def test_safetensors_file_is_read(model, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = OSTrackRGBX(model.config)
    assert load_rgb_checkpoint(fresh, path).ok
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        read_weights_only(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_trainer_checkpoint(tmp_path / "absent.pth")
