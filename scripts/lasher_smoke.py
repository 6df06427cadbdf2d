"""Run the commands of docs/lasher.md ("Fine-tune OSTrack on LasHeR") on a small LasHeR-format folder, on the CPU.

It reads every ```bash block of the page, writes a small LasHeR-format folder (640x480 JPEG frames, trainingset/ and
testingset/, with benchmarks/bench_data.py's generator) and a small RGB set, and runs each command as written with
only its sizes and paths changed (:data:`PATHS`, :data:`SIZES`): the shipped demo tracker for the OSTrack
checkpoint (no ``--tracker-preset``), 2 steps of 2 pairs, no bf16, 2 processes for N, validation every step on one
sequence, the first 6 frames of each sequence. tests/examples/test_lasher_page.py runs it.

    python scripts/lasher_smoke.py                     # in a temporary folder
    python scripts/lasher_smoke.py --work /tmp/lasher  # keep the data and outputs there
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "lasher.md"

#: Placeholders of the page -> the small folder's paths (relative to the work folder; {tracker}: the demo tracker).
PATHS = {"/data/LasHeR": "LasHeR", "/data/RGBT234": "LasHeR/testingset", "/data/got10k_rgb": "rgb",
         "/ckpt/OSTrack_ep0300.pth.tar": "{tracker}", "outputs": "outputs"}
#: Flag -> the value the smoke run uses (None: the flag and its value are dropped).
SIZES = {"--steps": "2", "--batch-size": "2", "--num-workers": "0", "--mixed-precision": "no",
         "--mixed_precision": "no", "--num_processes": "2", "--eval-every": "1", "--val-from-train": "1",
         "--tracker-preset": None, "--prior-batches": "1"}
#: Flags added so that the tiny run is quick and quiet (nothing the page's commands depend on).
EXTRA = {"finetune": ["--eval-frames", "6", "--report-to", "none", "--no-progress", "--srft", "prior_rank=4"],
         "evaluate": ["--frames", "6", "--no-progress"],
         "launch": ["--num_machines", "1", "--dynamo_backend", "no", "--main_process_port", "0"]}


def page_commands(page: Path = PAGE) -> list[list[str]]:
    """The commands of the ```bash blocks of ``page`` (continuation lines joined, comments dropped), as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        text = re.sub(r"\\\n", " ", block)
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def smoke_command(argv: list[str], work: Path, tracker: Path) -> list[str]:
    """``argv`` with :data:`PATHS` and :data:`SIZES` applied, ``python`` / ``accelerate launch`` run by this
    interpreter, and :data:`EXTRA` flags added."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in SIZES:
            skip = True
            if SIZES[arg] is not None:
                out += [arg, SIZES[arg]]
            continue
        for placeholder, local in PATHS.items():
            if arg == placeholder or arg.startswith(placeholder + "/"):
                arg = str(work / local.format(tracker=tracker)) + arg[len(placeholder):]
                break
        out.append(arg)
    if out[:2] == ["accelerate", "launch"]:
        out = [sys.executable, "-m", "accelerate.commands.launch", *EXTRA["launch"], *out[2:]]
    elif out[0] == "python":
        out = [sys.executable, *out[1:]]
    else:
        raise ValueError(f"{PAGE.name}: a command must start with python or accelerate launch, got {argv[0]!r}")
    kind = "evaluate" if "srft_peft.tracking.evaluate" in out else "finetune"
    return out + EXTRA[kind]


def make_small_lasher(work: Path) -> None:
    """A LasHeR-format folder (3 training, 2 test sequences of 8 frames, 640x480 JPEG) and an RGB set under ``work``."""
    sys.path.insert(0, str(REPO))
    from benchmarks.bench_data import make_lasher_folder
    from srft_peft.tracking.demo_data import make_demo_dataset

    make_lasher_folder(work / "LasHeR" / "trainingset", sequences=3, frames=8, seed=0)
    make_lasher_folder(work / "LasHeR" / "testingset", sequences=2, frames=8, seed=1)
    make_demo_dataset(work / "rgb", modality="rgb", num_train=2, num_test=1, frames=8, seed=1)


def run_page(work: Path, page: Path = PAGE, env: dict[str, str] | None = None) -> list[list[str]]:
    """Build the small folder under ``work`` and run every command of ``page`` on it; returns the commands run.
    Raises ``RuntimeError`` with the command's output when one fails."""
    from srft_peft.tracking import DEMO_TRACKER_DIR

    make_small_lasher(work)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(SRFT_DEMO_ROOT=str(work / "demo_cache"), SRFT_CACHE_DIR=str(work / "cache"), HF_HUB_OFFLINE="1")
    done = []
    for argv in page_commands(page):
        cmd = smoke_command(argv, work, DEMO_TRACKER_DIR)
        print("$", shlex.join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-6000:]}")
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)", flush=True)
        done.append(cmd)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="Folder for the data and outputs (default: temporary).")
    args = parser.parse_args()
    if args.work is not None:
        run_page(args.work)
        return
    with tempfile.TemporaryDirectory(prefix="lasher_smoke_") as tmp:
        run_page(Path(tmp))


if __name__ == "__main__":
    main()
