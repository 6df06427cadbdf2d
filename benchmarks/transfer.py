"""Plasticity vs. stability: SRFT against full fine-tuning, its ablations, L2-SP, EWC, prompt tuning and LoRA.

From the same RGB-pretrained demo tracker, every method fine-tunes on the demo RGB-T, RGB-D and RGB-E tasks; each run
is evaluated on the target test set (SR / PR / NPR) and, for retention of the RGB skill, on RGB-only test sequences
fed as [rgb, rgb]. The RGB tracker itself is evaluated once per modality. Mean ± std over seeds go into a Markdown
table, a JSON file and one plasticity–stability scatter plot per modality (x: RGB SR retained, y: target SR); the
points of a --sweep are joined by a line, one line per method.

    python benchmarks/transfer.py --srft prior_rank=8   # the docs' grid: 3 modalities x 8 methods x 3 seeds
    python benchmarks/transfer.py --quick         # 1 modality x 3 methods x 1 seed, few steps (CI smoke run)
    python benchmarks/transfer.py --modalities rgbt --seeds 0 --methods srft l2sp ewc \\
        --sweep lambda_prior 0.03 0.1 0.3 1 3    # trade-off curves of the anchor strength
    python benchmarks/transfer.py --report        # table and plot of every run already in --out (several sweeps)

Runs go to --jobs worker processes (one thread each). A run whose bench.json in --out records the same settings is
reused; one with other settings is run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srft_peft.checkpoint import ESTIMATION_FIELDS
from srft_peft.tracking.model import FUSION_INITS
from srft_peft.tracking.train import (
    METHODS,
    SRFT_METHODS,
    FinetuneConfig,
    finetune_rgbx,
    method_srft_config,
    parse_override,
)

METRICS = ("SR", "PR", "NPR")
BASELINE = "start: converted model (step 0)"


@dataclass(frozen=True)
class Run:
    """One fine-tune: ``label`` is the method, plus ``key=value`` for a sweep point."""

    modality: str
    method: str
    seed: int
    label: str
    settings: dict[str, Any] = field(hash=False)

    @property
    def folder(self) -> str:
        return f"{self.modality}-{self.label.replace(' ', '_').replace('=', '')}-seed{self.seed}"


def plan(args: argparse.Namespace) -> list[Run]:
    """Every run of the invocation: modality x seed x method (x sweep value for the methods with SRFT)."""
    common = {"steps": args.steps, "batch_size": args.batch_size, "eval_sequences": args.eval_sequences,
              "fusion_init": args.fusion_init, **args.set}
    runs = []
    for modality in args.modalities:
        for seed in args.seeds:
            for method in args.methods:
                srft = dict(args.srft) if method in SRFT_METHODS else {}
                points = [(method, srft)]
                if args.sweep and method in SRFT_METHODS:
                    key, values = args.sweep[0], args.sweep[1:]
                    points = [(f"{method} {key}={v}", {**srft, key: parse_override(f"{key}={v}")[1]}) for v in values]
                for label, overrides in points:
                    runs.append(Run(modality, method, seed, label, {**common, "srft_overrides": overrides}))
    return runs


# Settings that do not change the prior: runs differing only in these (and in non-estimation SRFT fields) share one.
NOT_PRIOR_SETTINGS = ("steps", "eval_sequences", "eval_frames", "lr", "weight_decay", "warmup_steps", "grad_clip",
                      "lora_r", "lora_alpha", "srft_overrides")


def prior_key(run: Run) -> str | None:
    """Runs with equal keys estimate the same prior (same tracker, calibration data and seed, estimation fields), so
    the first one estimates it and the others load it; None for runs without an estimated prior. The calibration set
    does not depend on the modality when it is the demo RGB set or an --set rgb_root."""
    cfg = method_srft_config(run.method, run.settings["steps"], run.settings["srft_overrides"])
    if cfg is None or run.method == "l2sp" or cfg.lambda_prior == 0.0 or run.settings.get("prior") is not None:
        return None
    modality_free = run.settings.get("rgb_root") is not None or run.settings.get("pretrained") is None
    key = {"seed": run.seed, "modality": None if modality_free else run.modality,
           "estimation": {f: getattr(cfg, f) for f in ESTIMATION_FIELDS},
           "settings": {k: v for k, v in run.settings.items() if k not in NOT_PRIOR_SETTINGS}}
    return json.dumps(key, sort_keys=True)


def run_one(run: Run, out: Path, evaluate_baseline: bool, prior_from: Run | None = None) -> dict:
    """Fine-tune and evaluate one run (or reuse its bench.json); ``prior_from``: a finished run whose saved prior
    this one loads instead of estimating it again."""
    folder = out / "runs" / run.folder
    cached = folder / "bench.json"
    if cached.exists():
        record = json.loads(cached.read_text())
        if record.get("settings") == run.settings and (record.get("baseline_target") or not evaluate_baseline):
            return record
    prior = str(out / "runs" / prior_from.folder / "prior") if prior_from is not None else None
    cfg = FinetuneConfig(method=run.method, modality=run.modality, seed=run.seed, output_dir=str(folder),
                         evaluate_rgb=True, evaluate_baseline=evaluate_baseline, report_to=None, save_every=0,
                         progress=False, num_threads=1, **{"prior": prior, **run.settings})
    t0 = time.perf_counter()
    results = finetune_rgbx(cfg)
    record = {"modality": run.modality, "method": run.method, "label": run.label, "seed": run.seed,
              "settings": run.settings, "target": results["metrics"], "rgb": results["rgb_metrics"],
              "baseline_target": results.get("baseline_metrics"), "baseline_rgb": results.get("baseline_rgb_metrics"),
              "prior": results["prior"], "train_seconds": results["train_time_s"],
              "seconds": time.perf_counter() - t0}
    cached.write_text(json.dumps(record, indent=2))
    print(f"  {run.modality} {run.label:32s} seed {run.seed}: target SR {100 * record['target']['SR']:5.1f}, "
          f"RGB SR {100 * record['rgb']['SR']:5.1f} ({record['seconds']:.0f} s)", flush=True)
    return record


def run_all(runs: list[Run], out: Path, jobs: int) -> list[dict]:
    """Run (or reuse) every run. The first run of each modality also evaluates the RGB tracker; the first run of each
    :func:`prior_key` estimates the prior, the others of the key start once it is done and load it."""
    keys = [prior_key(run) for run in runs]
    provider: dict[str, int] = {}
    first_of_modality: dict[str, int] = {}
    for i, (run, key) in enumerate(zip(runs, keys)):
        first_of_modality.setdefault(run.modality, i)
        if key is not None:
            provider.setdefault(key, i)
    source = [provider[key] if key is not None and provider[key] != i else None for i, key in enumerate(keys)]
    calls = [(run, out, first_of_modality[run.modality] == i, None if source[i] is None else runs[source[i]])
             for i, run in enumerate(runs)]
    # providers first (their dependents wait for them), then the rest, longest (prior estimation) first
    order = sorted(range(len(runs)), key=lambda i: (source[i] is not None, keys[i] is None))
    if jobs <= 1:
        records = {i: run_one(*calls[i]) for i in order}
        return [records[i] for i in range(len(runs))]
    # spawn: fresh interpreters (no forked torch thread pools)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for i in order:
            if source[i] is not None:
                futures[source[i]].result()  # dependents are ordered after every provider
            futures[i] = pool.submit(run_one, *calls[i])
        return [futures[i].result() for i in range(len(runs))]


def report_order(record: dict) -> tuple:
    """Modality, method (in METHODS order), fewest SRFT overrides first, then by field and numeric value, seed."""
    overrides = sorted(record["settings"]["srft_overrides"].items())
    values = [(k, (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))) for k, v in overrides]
    return record["modality"], METHODS.index(record["method"]), len(overrides), values, record["seed"]


def describe(record: dict, with_overrides: bool) -> tuple[str, str]:
    """(row label, curve) of a run: its label and method, or, for --report, the method with every SRFT override
    spelled out and a curve per method and set of overridden fields (so each sweep is one line)."""
    if not with_overrides:
        return record["label"], record["method"]
    overrides = sorted(record["settings"]["srft_overrides"].items())
    return (record["method"] + "".join(f" {k}={v}" for k, v in overrides),
            record["method"] + "".join(f" {k}" for k, _ in overrides))


def aggregate(records: list[dict], with_overrides: bool = False) -> dict:
    """{modality: {label: {"target": {metric: (mean, std)}, "rgb": {...}, "n": seeds, "curve": ...}}}, the RGB
    tracker first."""
    table: dict = {}
    for r in records:
        methods = table.setdefault(r["modality"], {BASELINE: {"target": {}, "rgb": {}, "n": 0}})
        if r["baseline_target"] and not methods[BASELINE]["n"]:
            methods[BASELINE] = {"target": {m: [r["baseline_target"][m]] for m in METRICS},
                                 "rgb": {m: [r["baseline_rgb"][m]] for m in METRICS}, "n": 1}
        label, curve = describe(r, with_overrides)
        row = methods.setdefault(label, {"target": {}, "rgb": {}, "n": 0, "method": r["method"], "curve": curve})
        row["n"] += 1
        for domain in ("target", "rgb"):
            for m in METRICS:
                row[domain].setdefault(m, []).append(r[domain][m])
    for methods in table.values():
        for row in methods.values():
            for domain in ("target", "rgb"):
                row[domain] = {m: (float(np.mean(v)), float(np.std(v))) for m, v in row[domain].items()}
    return table


def markdown(table: dict) -> str:
    lines = []
    for modality, methods in table.items():
        lines += [f"### {modality.upper()}", "",
                  "| method | target SR | target PR | target NPR | RGB SR (retention) | RGB PR | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for label, row in methods.items():
            if not row["n"]:
                continue
            cells = [f"{100 * row['target'][m][0]:.1f} ± {100 * row['target'][m][1]:.1f}" for m in METRICS]
            cells += [f"{100 * row['rgb'][m][0]:.1f} ± {100 * row['rgb'][m][1]:.1f}" for m in ("SR", "PR")]
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['n']} |")
        lines.append("")
    return "\n".join(lines)


def scatter(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table) + 2.6, 4.4), squeeze=False)
    for ax, (modality, methods) in zip(axes[0], table.items()):
        curves: dict[str, list] = {}
        for label, row in methods.items():
            if row["n"]:
                curves.setdefault(row.get("curve", label), []).append(row)
        colors = plt.get_cmap("tab20").colors
        for i, (curve, rows) in enumerate(curves.items()):
            rows = sorted(rows, key=lambda r: r["rgb"]["SR"][0])
            xs = [100 * r["rgb"]["SR"][0] for r in rows]
            ys = [100 * r["target"]["SR"][0] for r in rows]
            # SRFT's family as stars, the RGB tracker as a black cross, every other method as a circle
            marker = "*" if curve.startswith("srft") else "X" if curve == BASELINE else "o"
            color = "black" if curve == BASELINE else colors[(2 * i) % 20 + (2 * i) // 20 % 2]
            ax.errorbar(xs, ys, xerr=[100 * r["rgb"]["SR"][1] for r in rows],
                        yerr=[100 * r["target"]["SR"][1] for r in rows], fmt=marker, color=color,
                        ms=11 if marker == "*" else 7, capsize=3, label=curve)
            if len(rows) > 1:
                ax.plot(xs, ys, "-", color=color, alpha=0.6)
        ax.set_xlabel("RGB SR after fine-tuning (stability)")
        ax.set_ylabel(f"{modality.upper()} SR (plasticity)")
        ax.set_title(f"demo {modality.upper()}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=["rgbt", "rgbd", "rgbe"], choices=["rgbt", "rgbd", "rgbe"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 40; --quick: 8)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="pairs per step")
    parser.add_argument("--eval-sequences", type=int, default=None, help="evaluate on the first N test sequences")
    parser.add_argument("--fusion-init", default="identity", choices=list(FUSION_INITS),
                        help="how the dual-stream fusion blocks start (see OSTrackRGBX.init_from_rgb)")
    parser.add_argument("--srft", nargs="*", default=[], type=parse_override,
                        help="SRFTConfig overrides for the methods with SRFT, e.g. lambda_prior=3.0 prior_rank=16")
    parser.add_argument("--sweep", nargs="+", metavar=("KEY", "VALUE"), default=None,
                        help="an SRFTConfig field and its values: one run per value for each method with SRFT")
    parser.add_argument("--set", nargs="*", default=[], type=parse_override, metavar="KEY=VALUE",
                        help="other FinetuneConfig fields of every run, e.g. data_root=... pretrained=... lr=3e-4")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--quick", action="store_true", help="rgbt, srft/full/lora, one seed, 8 steps, 1 sequence")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: table and plot of every run found under --out/runs (rows name their "
                        "SRFT overrides; one curve per method and overridden fields)")
    parser.add_argument("--out", default="outputs/bench_transfer")
    args = parser.parse_args(argv)
    if args.quick:
        args.modalities, args.methods, args.seeds = ["rgbt"], ["srft", "full", "lora"], [0]
        args.steps, args.eval_sequences = args.steps or 8, args.eval_sequences or 1
    args.steps = args.steps or 40
    if args.sweep is not None and len(args.sweep) < 2:
        parser.error("--sweep needs a key and at least one value, e.g. --sweep lambda_prior 0.1 1")
    args.srft, args.set = dict(args.srft), dict(args.set)
    fixed = {"method", "modality", "seed", "output_dir", "srft_overrides", "evaluate_rgb", "evaluate_baseline"}
    known = {f.name for f in dataclasses.fields(FinetuneConfig)} - fixed
    unknown = sorted(set(args.set) - known)
    if unknown:
        parser.error(f"--set: {unknown} are not FinetuneConfig fields this script lets you set; choose from "
                     f"{sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.report:
        records = sorted((json.loads(p.read_text()) for p in out.glob("runs/*/bench.json")), key=report_order)
        if not records:
            raise SystemExit(f"--report: no runs under {out / 'runs'}")
        settings = sorted({json.dumps({k: v for k, v in r["settings"].items() if k != "srft_overrides"}, sort_keys=True)
                           for r in records})
        header = f"Report of {len(records)} runs in {out / 'runs'}; settings {'; '.join(settings)}.\n"
    else:
        runs = plan(args)
        print(f"{len(runs)} runs on {args.jobs} worker(s), {args.steps} steps x {args.batch_size} pairs each")
        records = run_all(runs, out, args.jobs)
        header = (f"Measured {date.today()} on {platform.machine()} ({args.jobs} worker process(es), 1 thread each), "
                  f"torch {torch.__version__}; {len(args.seeds)} seed(s), {args.steps} steps x {args.batch_size} pairs "
                  f"per run, fusion_init={args.fusion_init}; SRFT overrides {args.srft or 'none'}"
                  f"{f'; sweep {args.sweep[0]}' if args.sweep else ''}; total {time.perf_counter() - t0:.0f} s.\n")
    table = aggregate(records, with_overrides=args.report)
    text = header + "\n" + markdown(table)
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps({"records": records, "table": table}, indent=2))
    scatter(table, out / "transfer_scatter.png")
    print(text)
    print(f"wrote {out / 'transfer.md'}, {out / 'transfer.json'}, {out / 'transfer_scatter.png'}")
    return table


if __name__ == "__main__":
    main()
