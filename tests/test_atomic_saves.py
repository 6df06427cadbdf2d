"""Crash-atomic saves: a folder that ``save_pretrained`` was rewriting when the process died loads the old checkpoint or
the new one, never a mix, and what the dead writer left behind is removed by the next save.

A deterministic test stops a save at every rename and delete of its sequence (as a SIGKILL would: no clean-up runs);
a ``subprocess`` test kills a real saving process with SIGKILL at random moments."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpoint_helpers import make_srft

from srft_peft import SRFTModel, atomic, load_significance_checkpoint
from srft_peft.checkpoint import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    SIGNIFICANCE_NAME,
    SIGNIFICANCE_PATTERN,
    significance_path,
)

TESTS = Path(__file__).resolve().parent


class Killed(BaseException):
    """Stands for SIGKILL: not an ``Exception``, so no ``except``/clean-up of the writer runs."""


def fingerprint_of(folder: Path) -> tuple:
    """What a folder loads as: its config fields and every stored tensor (exact)."""
    ckpt = load_significance_checkpoint(folder)
    tensors = ckpt.prior.tensors()
    return ckpt.config.to_dict(), ckpt.step, {k: tensors[k] for k in sorted(tensors)}


def same(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1] == b[1] and a[2].keys() == b[2].keys() and all(
        torch.equal(a[2][k], b[2][k]) for k in a[2])


def which(folder: Path, expected: dict[str, tuple]) -> str:
    """The name of the checkpoint ``folder`` loads as; fails if it loads as none of ``expected``."""
    loaded = fingerprint_of(folder)
    names = [name for name, ckpt in expected.items() if same(loaded, ckpt)]
    assert names, f"{folder} loads, but as neither of {list(expected)}"
    return names[0]


def leftovers(folder: Path) -> list[str]:
    beside = [p.name for p in folder.parent.iterdir() if atomic.TMP_MARKER in p.name]
    inside = [p.name for p in folder.iterdir() if atomic.TMP_MARKER in p.name] if folder.is_dir() else []
    return sorted(beside + inside)


def crash_at(monkeypatch: pytest.MonkeyPatch, k: int) -> list[str]:
    """Make the k-th file-system change (``os.replace`` / ``os.unlink``) raise :class:`Killed`; returns the log."""
    log: list[str] = []
    for name in ("replace", "unlink"):
        real = getattr(os, name)

        def step(*args, _real=real, _name=name, **kwargs):
            log.append(f"{_name} {Path(args[-1]).name}")
            if len(log) == k:
                raise Killed
            return _real(*args, **kwargs)

        monkeypatch.setattr(os, name, step)
    return log


@pytest.mark.parametrize("existing", [True, False], ids=["rewrite", "new folder"])
def test_a_save_stopped_at_any_step_leaves_the_old_or_the_new_checkpoint(tmp_path: Path, existing: bool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = make_srft("kfac", lambda_prior=1.0), make_srft("kfac", data_seed=5, lambda_prior=2.0, train_steps=1)
    template = tmp_path / "template"
    old.save_pretrained(template)
    expected = {"old": fingerprint_of(template)}
    new.save_pretrained(tmp_path / "new", include_transfer_state=True)
    expected["new"] = fingerprint_of(tmp_path / "new")
    seen = set()
    for k in range(1, 50):
        folder = tmp_path / f"run{k}" / "ckpt"
        folder.parent.mkdir()
        if existing:
            shutil.copytree(template, folder)
        with monkeypatch.context() as m:
            log = crash_at(m, k)
            try:
                new.save_pretrained(folder, include_transfer_state=True)
                finished = True
            except Killed:
                finished = False
        if existing or folder.exists():
            seen.add(which(folder, expected))
        else:
            seen.add("nothing (new folder)")
        if finished:
            break
        with monkeypatch.context() as m:  # the next save, by a process that knows the killed writer is gone
            m.setattr(atomic, "writer_alive", lambda name: False)
            new.save_pretrained(folder, include_transfer_state=True)
        assert which(folder, expected) == "new" and leftovers(folder) == [], (k, log)
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([CONFIG_NAME, MODEL_CARD_NAME, significance_path(folder).name]), (k, log)
    assert finished and k > 3, log  # every step of the sequence was a crash point once
    assert seen == ({"old", "new"} if existing else {"nothing (new folder)", "new"}), seen


def test_a_format_1_checkpoint_loads_and_the_next_save_replaces_its_tensors_file(tmp_path: Path) -> None:
    """Format 1 (a fixed ``significance.safetensors``, no ``significance_file`` in the config) still loads; a new save
    into that folder commits its own content-named file and then deletes the old one."""
    a, b = make_srft("kfac"), make_srft("kfac", data_seed=5)
    a.save_pretrained(tmp_path)
    expected = fingerprint_of(tmp_path)
    significance_path(tmp_path).rename(tmp_path / SIGNIFICANCE_NAME)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    del meta["significance_file"]
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**meta, "format_version": 1}))
    assert same(fingerprint_of(tmp_path), expected)
    b.save_pretrained(tmp_path)
    assert not (tmp_path / SIGNIFICANCE_NAME).exists() and SIGNIFICANCE_PATTERN.fullmatch(significance_path(tmp_path).name)
    assert torch.equal(SRFTModel.from_pretrained(make_srft("kfac").base_model, tmp_path).prior.entries["fc1.weight"].U,
                       b.prior.entries["fc1.weight"].U)


def test_the_same_checkpoint_gets_the_same_file_name(tmp_path: Path) -> None:
    """Content naming is deterministic: saving an unchanged prior again keeps its file (no churn on the Hub)."""
    srft = make_srft("kfac")
    srft.save_pretrained(tmp_path / "a")
    srft.save_pretrained(tmp_path / "b")
    srft.save_pretrained(tmp_path / "a")
    assert significance_path(tmp_path / "a").name == significance_path(tmp_path / "b").name
    assert significance_path(tmp_path / "a").read_bytes() == significance_path(tmp_path / "b").read_bytes()


@pytest.mark.parametrize("bad", ["../outside.safetensors", "significance-xyz.safetensors", 3])
def test_a_config_naming_another_file_is_refused(tmp_path: Path, bad: object) -> None:
    make_srft("kfac").save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    (tmp_path / "ckpt" / CONFIG_NAME).write_text(json.dumps({**meta, "significance_file": bad}))
    with pytest.raises(ValueError, match=rf"srft_config\.json: significance_file must be a file name .*got {bad!r}"):
        load_significance_checkpoint(tmp_path / "ckpt")


def test_a_live_writers_temporary_files_are_kept(tmp_path: Path) -> None:
    """Only dead writers' leftovers are removed: a concurrent save's temporary file (this process) is not."""
    folder = tmp_path / "ckpt"
    make_srft("kfac").save_pretrained(folder)
    live = folder / atomic.temp_name()
    live.write_bytes(b"half")
    dead = folder / f"{atomic.TMP_MARKER}{2**31 - 2}-0123"  # no such process
    dead.write_bytes(b"half")
    make_srft("kfac", data_seed=5).save_pretrained(folder)
    assert live.exists() and not dead.exists()
    load_significance_checkpoint(folder)  # the half-written file confuses no reader


ZYGOTE = """
import itertools, os, sys, time
import torch
torch.set_num_threads(1)
sys.path[:0] = [{repo!r}, {tests!r}]
from checkpoint_helpers import make_srft

folder, refs = sys.argv[1], sys.argv[2]
a = make_srft("kfac", width=32, lambda_prior=1.0)
b = make_srft("kfac", width=32, data_seed=5, lambda_prior=2.0, train_steps=1)
a.save_pretrained(refs + "/a"); b.save_pretrained(refs + "/b", include_transfer_state=True)
t0 = time.perf_counter()
b.save_pretrained(folder, include_transfer_state=True)
a.save_pretrained(folder)  # the folder starts as "a"; one save's time on this machine, for the kills' delays
print("ready", (time.perf_counter() - t0) / 2, flush=True)
for line in sys.stdin:  # "fork": a new process that rewrites the folder until it is killed; "reap <pid>"
    if line.strip() == "fork":
        pid = os.fork()
        if pid == 0:
            try:
                for srft, transfer in itertools.cycle([(b, True), (a, False)]):
                    srft.save_pretrained(folder, include_transfer_state=transfer)
            finally:
                os._exit(1)
        print(pid, flush=True)
    else:
        os.waitpid(int(line.split()[1]), 0)
        print("reaped", flush=True)
"""


@pytest.mark.subprocess
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the saving processes")
def test_sigkill_during_saves_leaves_a_loadable_folder(tmp_path: Path) -> None:
    """30 processes, each forked from one that imported everything once (so a kill costs milliseconds, not an
    interpreter start), rewrite one folder alternating two checkpoints and are killed with SIGKILL after a random
    (seeded) delay of up to three saves' time, measured first; after each kill the folder loads as exactly one of the
    two."""
    script = tmp_path / "saver.py"
    script.write_text(ZYGOTE.format(repo=str(TESTS.parent), tests=str(TESTS)))
    folder, refs, rng, seen = tmp_path / "ckpt", tmp_path / "refs", random.Random(0), []
    zygote = subprocess.Popen([sys.executable, str(script), str(folder), str(refs)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        ready, save_seconds = zygote.stdout.readline().split()
        assert ready == "ready"
        expected = {"a": fingerprint_of(refs / "a"), "b": fingerprint_of(refs / "b")}
        for _ in range(30):
            zygote.stdin.write("fork\n")
            zygote.stdin.flush()
            pid = int(zygote.stdout.readline())
            # up to three saves' time (b, a, b): kills land before, between and after both checkpoints' commits
            time.sleep(rng.uniform(0.0, 3 * float(save_seconds)))
            os.kill(pid, signal.SIGKILL)
            zygote.stdin.write(f"reap {pid}\n")
            zygote.stdin.flush()
            assert zygote.stdout.readline().strip() == "reaped"
            seen.append(which(folder, expected))
            tensors_files = [p.name for p in folder.iterdir() if SIGNIFICANCE_PATTERN.fullmatch(p.name)]
            assert 1 <= len(tensors_files) <= 3, tensors_files  # the committed one (+ killed saves' new ones)
    finally:
        zygote.kill()
        zygote.wait()
    assert set(seen) == {"a", "b"}, seen  # the kills hit saves of both
    make_srft("kfac", width=32).save_pretrained(folder)  # the next save removes what the killed writers left
    assert leftovers(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, MODEL_CARD_NAME,
                                                              significance_path(folder).name])
