"""Where does a fine-tuned dual-stream tracker lose its RGB skill? Put back the start values (the converted model at
step 0) of ONE parameter group at a time and score the result on validation only: target ``val`` SR and, fed
``[rgb, rgb]``, RGB ``val`` SR. A group whose reset raises the RGB SR carries part of the loss; one whose reset
lowers the target SR carries part of what was learned. The groups are not additive (the network is not linear), so
the rows locate the loss; they do not split it.

    PYTHONPATH=. python benchmarks/forgetting_probe.py --pretrained outputs/tracker_c_1500b32 \\
        --runs outputs/bench_transfer/runs/tune/rgbe-full-lr0.0001-seed100 \\
               outputs/bench_transfer/runs/tune/rgbe-srft-lr0.0001_lambda_prior10-seed100

``--runs``: run folders of ``benchmarks/transfer.py`` (``bench.json`` for the modality, ``model/`` for the weights).
The start is rebuilt from ``--pretrained`` with identity fusion, as the benchmark does. Reads the demo v2 ``val``
splits under ``--data-dir`` and nothing else. Prints a Markdown table per run (``--out``: also written to a file).
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from srft_peft.tracking.checkpoint_io import load_tracker
from srft_peft.tracking.datasets import Sequence, load_dataset
from srft_peft.tracking.demo_data import default_demo_root
from srft_peft.tracking.model import OSTrackRGBX
from srft_peft.tracking.train.config import MODALITY_DATASETS
from srft_peft.tracking.train.data import truncate_sequence
from srft_peft.tracking.train.evaluate import evaluate_tracker

#: Parameter groups of a dual-stream tracker, by name prefix (every parameter is in exactly one).
GROUPS: dict[str, tuple[str, ...]] = {
    "RGB patch embedding": ("backbone.patch_embed.",),
    "RGB blocks": ("backbone.blocks.",),
    "X patch embedding": ("backbone_x.patch_embed.",),
    "X blocks": ("backbone_x.blocks.",),
    "fusion blocks": ("fusion.",),
    "pos. embeddings, final norms": ("backbone.pos_embed", "backbone_x.pos_embed", "backbone.norm.",
                                     "backbone_x.norm."),
    "box head": ("box_head.",),
}
ALL = "all groups (control: = start)"


def group_names(model: OSTrackRGBX) -> dict[str, list[str]]:
    """The state-dict keys of ``model`` (a dual-stream tracker) in each of :data:`GROUPS`; a key in no group or in
    two is an error."""
    if model.config.mode != "dual_stream":
        raise ValueError(f"the probe needs a dual-stream tracker, got mode={model.config.mode!r}")
    keys = list(model.state_dict())
    found = {g: [k for k in keys if k.startswith(prefixes)] for g, prefixes in GROUPS.items()}
    counts = {k: sum(k in names for names in found.values()) for k in keys}
    bad = {k: c for k, c in counts.items() if c != 1}
    if bad:
        raise ValueError(f"parameters not in exactly one group of GROUPS: {sorted(bad)[:5]}")
    return found


def with_reset(model: OSTrackRGBX, start: dict[str, torch.Tensor], keys: list[str]) -> OSTrackRGBX:
    """A copy of ``model`` whose ``keys`` hold the ``start`` values (the rest unchanged)."""
    reset = copy.deepcopy(model)
    reset.load_state_dict({**model.state_dict(), **{k: start[k] for k in keys}})
    return reset


def relative_change(model: OSTrackRGBX, start: dict[str, torch.Tensor], keys: list[str]) -> float:
    """||theta - theta_start|| / ||theta_start|| over the parameters among ``keys`` (buffers, e.g. the box head's
    coordinate grids, are left out; 0 when the start is all zeros and nothing moved)."""
    params = {name for name, _ in model.named_parameters()}
    keys = [k for k in keys if k in params]
    state = model.state_dict()
    moved = sum(float(((state[k].double() - start[k].double()) ** 2).sum()) for k in keys) ** 0.5
    size = sum(float((start[k].double() ** 2).sum()) for k in keys) ** 0.5
    return moved / size if size > 0 else float(moved > 0)


def scores(model: OSTrackRGBX, target: list[Sequence], rgb: list[Sequence]) -> tuple[float, float]:
    """(target val SR, RGB val SR fed [rgb, rgb]) in %."""
    t = evaluate_tracker(model, target, None, "cpu", False)["SR"]
    r = evaluate_tracker(model, rgb, None, "cpu", False, rgb_input=True)["SR"]
    return 100 * t, 100 * r


def probe(model: OSTrackRGBX, start_model: OSTrackRGBX, target: list[Sequence], rgb: list[Sequence]) -> dict:
    """Scores of the start, of ``model``, and of ``model`` with each group (and, as a control, all of them) reset."""
    start = start_model.state_dict()
    groups = group_names(model)
    tuned = scores(model, target, rgb)
    rows = []
    every = [k for names in groups.values() for k in names]
    for name, keys in [*groups.items(), (ALL, every)]:
        t, r = scores(with_reset(model, start, keys), target, rgb)
        rows.append({"group": name, "relative_change": relative_change(model, start, keys),
                     "target_delta": t - tuned[0], "rgb_delta": r - tuned[1]})
    return {"start": scores(start_model, target, rgb), "tuned": tuned, "rows": rows}


def format_probe(label: str, result: dict) -> str:
    (st, sr), (tt, tr) = result["start"], result["tuned"]
    lines = [f"#### {label}", "", f"start: target val SR {st:.1f}, RGB val SR {sr:.1f}; fine-tuned: {tt:.1f}, {tr:.1f} "
             f"(RGB val SR lost: {sr - tr:.1f})", "",
             "| group reset to the start | ‖Δθ‖ / ‖θ_start‖ | Δ target val SR | Δ RGB val SR |", "|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['relative_change']:.3f} | {r['target_delta']:+.1f} | {r['rgb_delta']:+.1f} |"
              for r in result["rows"]]
    return "\n".join(lines)


def validation_sets(data_dir: Path, modality: str, frames: int | None) -> tuple[list[Sequence], list[Sequence]]:
    """The demo v2 target ``val`` and RGB ``val`` sequences (first ``frames`` frames)."""
    target = load_dataset(MODALITY_DATASETS[modality], data_dir / f"v2_{modality}" / "val")
    rgb = load_dataset("rgb", data_dir / "v2_rgb" / "val")
    return [truncate_sequence(s, frames) for s in target], [truncate_sequence(s, frames) for s in rgb]


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="run folders of benchmarks/transfer.py")
    parser.add_argument("--pretrained", required=True, help="the RGB tracker folder the runs started from")
    parser.add_argument("--data-dir", default=None, help="where the demo v2 sets are (default: the demo root)")
    parser.add_argument("--eval-frames", type=int, default=12, help="first N frames of each sequence (0: all)")
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data_dir = Path(args.data_dir) if args.data_dir else default_demo_root()
    start_model = OSTrackRGBX.from_rgb(load_tracker(args.pretrained), "dual_stream", fusion_init="identity")
    results, tables = {}, []
    for folder in map(Path, args.runs):
        record_path = folder / "bench.json"
        if not record_path.is_file() or not (folder / "model").is_dir():
            raise SystemExit(f"--runs: {folder} is not a finished benchmarks/transfer.py run (needs bench.json and "
                             "model/)")
        record = json.loads(record_path.read_text())
        target, rgb = validation_sets(data_dir, record["modality"], args.eval_frames or None)
        results[folder.name] = probe(load_tracker(folder / "model"), start_model, target, rgb)
        tables.append(format_probe(folder.name, results[folder.name]))
        print(tables[-1] + "\n", flush=True)
    if args.out:
        Path(args.out).write_text("\n\n".join(tables) + "\n")
    return results


if __name__ == "__main__":
    main()
