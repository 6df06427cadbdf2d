"""The evaluation command: one-pass evaluation of a saved tracker on any registered dataset, spread over the processes
it is launched with, result files in the toolkits' format and the benchmark's metrics.

    python -m srft_peft.tracking.evaluate --model outputs/lasher_srft/model --dataset lasher \\
        --root /data/LasHeR --split test --out outputs/lasher_srft/eval
    accelerate launch --multi_gpu --num_processes 8 -m srft_peft.tracking.evaluate --model ... --dataset rgbt234 \\
        --root /data/RGBT234 --out outputs/lasher_srft/eval_rgbt234

Each process tracks its share of the sequences (balanced by frame count) and writes their files to
``OUT/<name>/`` (``<name>_<seq>.txt`` for RGBT234 / RGBT210 / GTOT, whose MATLAB toolkits read that, else
``<seq>.txt``); the main process scores all of them and writes ``OUT/results.json``.

Example:
    >>> main(["--model", "/no/such/model", "--dataset", "lasher", "--root", "/data"])  # doctest: +SKIP
    evaluate: error: ...
    2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any

from .checkpoint_io import load_tracker
from .datasets import DATASETS, get_dataset
from .train.common import configure_threads
from .train.data import SPLIT_FOLDERS, resolve_split_root, truncate_sequence
from .train.evaluate import SCALARS, Processes, evaluate_tracker, jsonable, scalars

__all__ = ["build_parser", "evaluate_model", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m srft_peft.tracking.evaluate",
                                     description="One-pass evaluation of a saved tracker (a save_tracker folder, e.g. "
                                     "a fine-tune's output_dir/model) on a dataset; launch it with accelerate launch "
                                     "to spread the sequences over several processes.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="Tracker folder written by save_tracker (config.json + "
                        "model.safetensors).")
    parser.add_argument("--dataset", required=True, help=f"Loader: one of {', '.join(sorted(DATASETS))}.")
    parser.add_argument("--root", required=True, help="Dataset root (the --split folder is looked up under it) or "
                        "the folder of the sequences themselves.")
    parser.add_argument("--split", default="test", choices=sorted(SPLIT_FOLDERS),
                        help="Split folder to look up under --root; --root itself when it has none.")
    parser.add_argument("--split-file", default=None, help="File listing the sequence names to evaluate.")
    parser.add_argument("--out", default="outputs/evaluate", help="Output folder: <name>/ result files, results.json.")
    parser.add_argument("--name", default=None, help="Tracker name: the result folder and, for RGBT234 / RGBT210 / "
                        "GTOT, the file prefix; default: the --model folder's name.")
    parser.add_argument("--sequences", type=int, default=None, help="Evaluate the first N sequences only.")
    parser.add_argument("--frames", type=int, default=None, help="Evaluate the first N frames of each only.")
    parser.add_argument("--rgb-input", action="store_true", help="Feed the RGB channels only ([rgb, rgb] for an "
                        "RGB-X model): RGB-skill retention.")
    parser.add_argument("--num-threads", type=int, default=None, help="Intra-op CPU threads per process.")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="Progress bars (main process).")
    return parser


def _sequences(args: argparse.Namespace) -> tuple[list[Any], Path]:
    record = get_dataset(args.dataset)
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root}: no such folder")
    with contextlib.suppress(FileNotFoundError):
        root = resolve_split_root(root, args.split)
    kwargs = {"split_file": args.split_file} if args.split_file is not None else {}
    seqs = record.loader(root, **kwargs)
    for flag, value in (("--sequences", args.sequences), ("--frames", args.frames)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    return [truncate_sequence(s, args.frames) for s in seqs[: args.sequences]], root


def evaluate_model(args: argparse.Namespace, accelerator: Any = None) -> dict[str, Any]:
    """Run the evaluation of parsed :func:`build_parser` arguments; the results on the main process, ``{}`` on the
    others (which return once the main process has written ``results.json``)."""
    from accelerate import Accelerator

    from .train.finetune import cpu_distributed

    model_dir = Path(args.model).expanduser()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"--model {model_dir}: not a tracker folder (no config.json; write one with "
                                "save_tracker, e.g. a fine-tune's output_dir/model)")
    seqs, root = _sequences(args)  # checked before any process group is made
    own_accelerator = accelerator is None
    accelerator = Accelerator(cpu=cpu_distributed()) if own_accelerator else accelerator
    processes = Processes.from_accelerator(accelerator)
    configure_threads(args.num_threads, accelerator.device)
    model = load_tracker(model_dir, device=accelerator.device)
    name = args.name or model_dir.name
    out = Path(args.out).expanduser()
    show = args.progress and accelerator.is_local_main_process
    summary = evaluate_tracker(model, seqs, out / name, accelerator.device, show, rgb_input=args.rgb_input,
                               processes=processes, tracker_name=name)
    results: dict[str, Any] = {}
    if processes.is_main:
        results = jsonable({"tracker": name, "model": str(model_dir), "dataset": get_dataset(args.dataset).name,
                            "root": str(root), "sequences": len(seqs), "num_processes": processes.world_size,
                            "rgb_input": args.rgb_input, "metrics": scalars(summary),
                            "per_sequence": summary["per_sequence"], "summary": summary})
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    processes.close()  # every process returns once results.json is written
    if own_accelerator:
        accelerator.end_training()  # destroys the process group this command made
    return results


def main(argv: SequenceABC[str] | None = None) -> int:
    """Entry point; returns the exit code (2 on bad input). Prints the metrics on the main process."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # bad usage (2) and --help (0)
        return e.code if isinstance(e.code, int) else 2
    try:
        results = evaluate_model(args)
    except (OSError, ValueError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    if results:
        metrics = "  ".join(f"{k} {100 * v:.1f}" for k, v in results["metrics"].items() if k in SCALARS[:-1])
        print(f"{results['tracker']} on {results['dataset']} ({results['sequences']} sequences, "
              f"{results['num_processes']} process(es)): {metrics}")
        print(f"results: {Path(args.out) / 'results.json'}   boxes: {Path(args.out) / results['tracker']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
