"""Recipe ablations on validation (issue 10 item 4): starting from the SRFT configuration (lr, lambda_prior) that the
tune stage of ``benchmarks/transfer.py`` selected per modality, vary ONE recipe field of
:class:`~srft_peft.tracking.train.FinetuneConfig` at a time (:data:`ROWS`) and score each run as the tune stage does,
on validation only: target ``val`` SR and, fed ``[rgb, rgb]``, RGB ``val`` SR; their mean is the selection score.

    PYTHONPATH=. python benchmarks/recipe_ablation.py --tuned outputs/bench_transfer/transfer.json

Same steps, sizes, data and seeds as the tune stage (seed 100, plus 101 by default); runs are the tune stage's
(:func:`benchmarks.transfer.run_one`), so a default-row run already in ``--out`` with the same settings is reused.
Writes ``recipe_ablation.md`` / ``.json`` to ``--out``: per modality, each row's mean over seeds, its paired
differences to the default row (score per seed; target-val and RGB-val SR with two-way bootstrap 95 % intervals over
seeds x validation sequences), and ``transfer_share`` (the lr-weighted share of the update the transfer term acts on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.compare import paired_difference
from benchmarks.transfer import (
    MODALITIES,
    TITLES,
    TUNING_SEED,
    Run,
    build_data,
    run_all,
    run_settings,
    selection_score,
    shipped_tracker,
)
from srft_peft.tracking.demo_data import default_demo_root
from srft_peft.tracking.train import FinetuneConfig

METHOD = "srft"
DEFAULT = "default"
#: One recipe field changed per row; "default" is the library's recipe (checked against FinetuneConfig's defaults).
ROWS: dict[str, dict[str, Any]] = {
    DEFAULT: {},
    "clip_order=task": {"clip_order": "task"},
    "prior_scope=all": {"prior_scope": "all"},
    "prior_scope=rgb-stream": {"prior_scope": "rgb-stream"},
    "kappa_horizon=0.5": {"kappa_horizon": 0.5},
    "kappa_horizon=0.3": {"kappa_horizon": 0.3},
}
DEFAULT_RECIPE = {"clip_order": "total", "prior_scope": "pretrained", "kappa_horizon": 1.0}


def check_default_recipe() -> None:
    """The default row runs FinetuneConfig's defaults: fail if they are not :data:`DEFAULT_RECIPE` (the table would
    then mislabel its baseline)."""
    fields = FinetuneConfig.__dataclass_fields__
    actual = {k: fields[k].default for k in DEFAULT_RECIPE}
    if actual != DEFAULT_RECIPE:
        raise ValueError(f"FinetuneConfig's recipe defaults are {actual}, this script's default row assumes "
                         f"{DEFAULT_RECIPE}: update DEFAULT_RECIPE")


def load_chosen(path: Path, modalities: list[str]) -> dict[str, dict[str, Any]]:
    """The tune stage's chosen SRFT knobs per modality, from its ``transfer.json`` (``chosen["<modality> srft"]``)."""
    if not path.is_file():
        raise FileNotFoundError(f"--tuned: no tune-stage result at {path} (run benchmarks/transfer.py --stage tune)")
    chosen = json.loads(path.read_text()).get("chosen", {})
    missing = [m for m in modalities if f"{m} {METHOD}" not in chosen]
    if missing:
        raise ValueError(f"--tuned: {path} has no chosen {METHOD} configuration for {missing}")
    return {m: chosen[f"{m} {METHOD}"] for m in modalities}


def plan(args: argparse.Namespace, data, chosen: dict[str, dict[str, Any]]) -> list[tuple[str, Run]]:
    """``(row, run)`` for every seed x modality x row, seed-major (the tuning seed's table is complete first). A row's
    fields go into its knobs (hence its folder) and override the tune-stage settings."""
    plan_ = []
    for seed in args.seeds:
        for m in args.modalities:
            for row in args.rows:
                settings = {**run_settings(args, data, "tune", m, METHOD, chosen[m]), **ROWS[row]}
                plan_.append((row, Run("tune", m, METHOD, seed, {**chosen[m], **ROWS[row]}, settings)))
    return plan_


def transfer_share(out: Path, run: Run) -> float | None:
    """results.json's ``transfer_share`` of a finished run (None when it reports none)."""
    return json.loads((out / "runs" / run.folder / "results.json").read_text()).get("transfer_share")


def summarize_rows(entries: list[dict], resamples: int = 10_000) -> dict[str, list[dict]]:
    """Per modality, per row (in :data:`ROWS` order): mean over seeds of target-val SR, RGB-val SR, score and
    transfer_share; the per-seed score differences to the default row of the same seed; and the paired two-way
    bootstrap intervals (:func:`benchmarks.compare.paired_difference`, over seeds x validation sequences) of
    the target-val and RGB-val SR differences to the default row. ``entries``: dicts with modality, row, seed,
    target_sr, rgb_sr, score, transfer_share and the per-sequence scores ``target_seq`` / ``rgb_seq``."""
    table: dict[str, list[dict]] = {}
    for m in dict.fromkeys(e["modality"] for e in entries):
        mine = [e for e in entries if e["modality"] == m]
        default = {e["seed"]: e for e in mine if e["row"] == DEFAULT}
        rows = []
        for row in (r for r in ROWS if any(e["row"] == r for e in mine)):
            runs = sorted((e for e in mine if e["row"] == row and e["seed"] in default), key=lambda e: e["seed"])
            shares = [e["transfer_share"] for e in runs if e["transfer_share"] is not None]
            summary = {"row": row, "seeds": [e["seed"] for e in runs],
                       **{k: sum(e[k] for e in runs) / len(runs) for k in ("target_sr", "rgb_sr", "score")},
                       "transfer_share": sum(shares) / len(shares) if shares else None,
                       "delta": [e["score"] - default[e["seed"]]["score"] for e in runs]}
            if row != DEFAULT:
                for side in ("target", "rgb"):
                    diff = paired_difference({e["seed"]: e[f"{side}_seq"] for e in runs},
                                             {e["seed"]: default[e["seed"]][f"{side}_seq"] for e in runs},
                                             labels=(row, DEFAULT), n_resamples=resamples)
                    summary[f"{side}_delta"] = dataclasses.asdict(diff)
            rows.append(summary)
        table[m] = rows
    return table


def _interval(d: dict | None) -> str:
    return "—" if d is None else f"{100 * d['mean']:+.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def format_table(rows: list[dict]) -> str:
    """Markdown: SRs in %; Δ score = mean paired score difference to the default row (per seed in brackets); Δ target
    / RGB = paired differences of the SRs with their 95 % bootstrap interval."""
    lines = ["| row | target val SR | RGB val SR | score (mean) | Δ score vs default | Δ target val SR [95 % CI] | "
             "Δ RGB val SR [95 % CI] | transfer_share |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["row"] == DEFAULT:
            delta = "—"
        else:
            per_seed = ", ".join(f"{100 * d:+.1f}" for d in r["delta"])
            delta = f"{100 * sum(r['delta']) / len(r['delta']):+.1f}" + (f" ({per_seed})" if len(r["delta"]) > 1 else "")
        share = "—" if r["transfer_share"] is None else f"{r['transfer_share']:.3f}"
        lines.append(f"| {r['row']} | {100 * r['target_sr']:.1f} | {100 * r['rgb_sr']:.1f} | {100 * r['score']:.1f} "
                     f"| {delta} | {_interval(r.get('target_delta'))} | {_interval(r.get('rgb_delta'))} | {share} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuned", default="outputs/bench_transfer/transfer.json",
                        help="transfer.json of benchmarks/transfer.py's tune stage (its chosen SRFT configurations)")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=list(MODALITIES))
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[TUNING_SEED, TUNING_SEED + 1])
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (the tune stage's)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--prior-batches", type=int, default=8, help="calibration batches of the prior")
    parser.add_argument("--eval-frames", type=int, default=12, help="evaluate the first N frames (0: every frame)")
    parser.add_argument("--pretrained", default=None, help="RGB tracker folder (default: the shipped demo tracker)")
    parser.add_argument("--data-dir", default=None, help="where the demo v2 sets are (default: the demo root)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--out", default="outputs/recipe_ablation")
    args = parser.parse_args(argv)
    if DEFAULT not in args.rows:
        parser.error(f"--rows: {args.rows} lacks {DEFAULT!r}, the row every difference is measured against")
    args.eval_frames = args.eval_frames or None
    args.set = {}  # run_settings' extra FinetuneConfig fields: none, the rows are the only changes
    if args.pretrained is None:
        args.pretrained = shipped_tracker()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_default_recipe()
    chosen = load_chosen(Path(args.tuned), args.modalities)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(Path(args.data_dir) if args.data_dir else default_demo_root(), args.modalities, {})
    planned = plan(args, data, chosen)
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU(s), {args.jobs} worker process(es) x 1 thread, "
               f"torch {torch.__version__}")
    print(f"recipe ablation: {len(planned)} runs on {args.jobs} worker(s), seeds {args.seeds}; {args.steps} steps x "
          f"{args.batch_size} pairs, eval_frames={args.eval_frames or 'all'}; tracker {args.pretrained}", flush=True)
    t0 = time.perf_counter()
    records = run_all([run for _, run in planned], out, args.jobs, evaluate_start=False)
    wall = time.perf_counter() - t0
    entries = [{"modality": run.modality, "row": row, "seed": run.seed, "target_sr": rec["target"]["SR"],
                "rgb_sr": rec["rgb"]["SR"], "score": selection_score(rec), "transfer_share": transfer_share(out, run),
                "seconds": rec["seconds"], "target_seq": rec["per_sequence"]["target"],
                "rgb_seq": rec["per_sequence"]["rgb"]} for (row, run), rec in zip(planned, records)]
    table = summarize_rows(entries, args.resamples)
    header = (f"Measured {datetime.now(timezone.utc).isoformat(timespec='minutes')} on {machine}; {len(planned)} runs "
              f"in {wall:.0f} s wall ({sum(e['seconds'] for e in entries):.0f} s summed over runs, reused ones at "
              f"their original time); seeds {args.seeds}; validation splits only.\n")
    text = "\n".join(f"### {TITLES[m]}: srft {' '.join(f'{k}={v:g}' for k, v in chosen[m].items())}\n\n"
                     f"{format_table(rows)}\n" for m, rows in table.items())
    (out / "recipe_ablation.md").write_text(header + "\n" + text)
    result = {"machine": machine, "wall_seconds": wall, "chosen": chosen, "table": table,
              "runs": [{k: v for k, v in e.items() if not k.endswith("_seq")} for e in entries]}
    (out / "recipe_ablation.json").write_text(json.dumps(result, indent=2))
    print(header + "\n" + text)
    return result


if __name__ == "__main__":
    main()
