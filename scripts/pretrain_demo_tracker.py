"""Pretrain the shipped demo RGB tracker on demo data v2, choose its recipe on ``val`` and ship it.

Usage (from the repository root):

    # try a recipe: pretrain on the v2 RGB ``pretrain`` split, score on ``val`` only
    PYTHONPATH=. python scripts/pretrain_demo_tracker.py --steps 900 --lr 1e-3 --work-dir outputs/demo_tracker/try1

    # ship the chosen recipe: pretrain, score on ``val``, then once on ``retention``, and write the fp16 asset
    PYTHONPATH=. python scripts/pretrain_demo_tracker.py --steps 900 --lr 1e-3 --ship

``--ship`` writes ``config.json``, ``model.safetensors`` (fp16), ``recipe.json`` and ``SHA256`` (with
:func:`~srft_peft.tracking.write_demo_tracker`) to ``--asset-dir``
(default: the package's ``srft_peft/tracking/assets/demo_rgb_tracker``) and prints the checksum and the metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

import srft_peft
from srft_peft.tracking import (
    OSTrackRGBX,
    PretrainConfig,
    Tracker,
    TrackerConfig,
    evaluate_results,
    load_dataset,
    load_tracker,
    make_demo_dataset,
    pretrain_rgb,
    run_tracker,
    write_demo_tracker,
)

DATA_VERSION = 2
DEFAULT_ASSET_DIR = Path(__file__).resolve().parents[1] / "srft_peft" / "tracking" / "assets" / "demo_rgb_tracker"
METRICS = ("SR", "PR", "NPR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="outputs/demo_v2_rgb", help="Where demo data v2 (RGB) is built.")
    parser.add_argument("--data-seed", type=int, default=0, help="Seed of the demo data v2 generator.")
    parser.add_argument("--work-dir", default="outputs/demo_tracker/run", help="Where the fp32 tracker is trained.")
    parser.add_argument("--asset-dir", default=str(DEFAULT_ASSET_DIR), help="Where --ship writes the asset.")
    parser.add_argument("--ship", action="store_true", help="Also score on retention (once) and write the asset.")
    parser.add_argument("--reuse", action="store_true",
                        help="Skip training if --work-dir already holds a tracker trained with this exact recipe.")
    parser.add_argument("--variant", default="tiny", help="ViT size (tiny keeps the fine-tune grid CPU-fast).")
    parser.add_argument("--template-size", type=int, default=32, help="Template crop (pixels).")
    parser.add_argument("--search-size", type=int, default=64, help="Search crop (pixels).")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads.")
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name),
                            help=f.metadata.get("help", ""))
    return parser


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository root when inside it (no machine-specific folders in the recipe)."""
    resolved, repo = Path(path).resolve(), DEFAULT_ASSET_DIR.parents[3]
    return str(resolved.relative_to(repo)) if resolved.is_relative_to(repo) else str(path)


def _trained_with(work: Path, config: TrackerConfig, recipe: PretrainConfig) -> bool:
    """Whether ``work`` holds a tracker that ``pretrain_rgb`` trained with ``config`` and ``recipe``."""
    path = work / "pretrain.json"
    if not all((work / name).is_file() for name in ("pretrain.json", "model.safetensors", "scores.json")):
        return False
    done = json.loads(path.read_text())
    return done.get("recipe") == dataclasses.asdict(recipe) and done.get("tracker") == config.to_dict()


def score(model: OSTrackRGBX, sequences: list[Any]) -> dict[str, float]:
    """SR / PR / NPR (percent) and fps of ``model`` on RGB ``sequences``."""
    tracker = Tracker(model.eval(), device="cpu")
    summary = evaluate_results(sequences, run_tracker(tracker, sequences, progress=False, rgb_only=True))
    return {**{m: round(100 * float(summary[m]), 2) for m in METRICS}, "fps": round(float(summary["fps"]), 1),
            "num_sequences": int(summary["num_sequences"])}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    recipe = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    config = TrackerConfig(variant=args.variant, mode="rgb", template_size=args.template_size,
                           search_size=args.search_size)
    root = make_demo_dataset(args.data_root, modality="rgb", version=DATA_VERSION, seed=args.data_seed)
    start = time.perf_counter()
    work = Path(args.work_dir)
    if args.reuse and _trained_with(work, config, recipe):
        train_s = json.loads((work / "scores.json").read_text())["train_seconds"]
    else:
        pretrain_rgb(config, root / "pretrain", work, recipe, dataset="rgb", num_threads=args.num_threads,
                     progress=False)
        train_s = time.perf_counter() - start
    val = load_dataset("rgb", root / "val")
    result: dict[str, Any] = {
        "script": "scripts/pretrain_demo_tracker.py",
        "arguments": vars(args) | {"asset_dir": _repo_relative(args.asset_dir)},
        "tracker": config.to_dict(), "recipe": dataclasses.asdict(recipe),
        "library_version": srft_peft.__version__, "data": {"generator_version": DATA_VERSION, "seed": args.data_seed,
                                                           "train": "rgb/pretrain", "select": "rgb/val",
                                                           "test": "rgb/retention"},
        "train_seconds": round(train_s, 1), "val": score(load_tracker(work), val),
    }
    print(f"val        SR {result['val']['SR']:.1f}  PR {result['val']['PR']:.1f}  NPR {result['val']['NPR']:.1f}"
          f"  (trained in {train_s:.0f} s)")
    if args.ship:
        shipped = load_tracker(work).half().float()  # the weights as the fp16 asset stores them
        result["val_fp32"], result["val"] = result["val"], score(shipped, val)
        result["retention"] = score(shipped, load_dataset("rgb", root / "retention"))
        result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        result["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                             "python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads()}
        digest = write_demo_tracker(shipped, args.asset_dir, result)
        result["sha256"] = digest
        v, r = result["val"], result["retention"]
        print(f"val fp16   SR {v['SR']:.1f}  PR {v['PR']:.1f}  NPR {v['NPR']:.1f}")
        print(f"retention  SR {r['SR']:.1f}  PR {r['PR']:.1f}  NPR {r['NPR']:.1f}")
        print(f"sha256     {digest}  {Path(args.asset_dir) / 'model.safetensors'}")
    (Path(args.work_dir) / "scores.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
