"""Plasticity vs. stability: SRFT against full fine-tuning, its ablations, L2-SP, EWC, prompt tuning and LoRA.

From the same RGB-pretrained demo tracker, every method fine-tunes on the demo RGB-T, RGB-D and RGB-E tasks; each run
is evaluated on the target test set (SR / PR / NPR) and, for retention of the RGB skill, on RGB-only test sequences
fed as [rgb, rgb]. Mean ± std over seeds go into a Markdown table, a JSON file and one plasticity–stability scatter
plot per modality (x: RGB SR retained, y: target SR).

    python benchmarks/transfer.py                 # 3 modalities x 8 methods x 3 seeds (the docs' numbers)
    python benchmarks/transfer.py --quick         # 1 modality x 3 methods x 1 seed, few steps (CI smoke run)
    python benchmarks/transfer.py --methods srft full --srft lambda_prior=3.0 --seeds 0 1 2

Runs are independent; results already in --out are reused (delete the folder to recompute).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from srft_peft.tracking.training import METHODS, FinetuneConfig, _parse_override, finetune_rgbx

METRICS = ("SR", "PR", "NPR")


def run_one(args: argparse.Namespace, modality: str, method: str, seed: int) -> dict:
    out = Path(args.out) / "runs" / f"{modality}-{method}-seed{seed}"
    cached = out / "bench.json"
    if cached.exists():
        return json.loads(cached.read_text())
    overrides = dict(args.srft) if method.startswith("srft") else {}
    cfg = FinetuneConfig(method=method, modality=modality, seed=seed, steps=args.steps, output_dir=str(out),
                         evaluate_rgb=True, evaluate_baseline=True, report_to=None, save_every=0, progress=False,
                         srft_overrides=overrides, eval_sequences=args.eval_sequences)
    t0 = time.perf_counter()
    results = finetune_rgbx(cfg)
    record = {"modality": modality, "method": method, "seed": seed, "target": results["metrics"],
              "rgb": results["rgb_metrics"], "baseline_target": results["baseline_metrics"],
              "baseline_rgb": results["baseline_rgb_metrics"], "seconds": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(record, indent=2))
    return record


def aggregate(records: list[dict]) -> dict:
    """{modality: {method: {"target": {metric: (mean, std)}, "rgb": {...}}}} plus the RGB tracker's own row."""
    table: dict = {}
    for r in records:
        row = table.setdefault(r["modality"], {}).setdefault(r["method"], {"target": {}, "rgb": {}, "n": 0})
        row["n"] += 1
        for domain in ("target", "rgb"):
            for m in METRICS:
                row[domain].setdefault(m, []).append(r[domain][m])
        base = table[r["modality"]].setdefault("RGB tracker (no fine-tuning)", {"target": {}, "rgb": {}, "n": 0})
        if base["n"] == 0:
            base["n"] = 1
            for m in METRICS:
                base["target"][m] = [r["baseline_target"][m]]
                base["rgb"][m] = [r["baseline_rgb"][m]]
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
        for method, row in methods.items():
            cells = [f"{100 * row['target'][m][0]:.1f} ± {100 * row['target'][m][1]:.1f}" for m in METRICS]
            cells += [f"{100 * row['rgb'][m][0]:.1f} ± {100 * row['rgb'][m][1]:.1f}" for m in ("SR", "PR")]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {row['n']} |")
        lines.append("")
    return "\n".join(lines)


def scatter(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table), 4.4), squeeze=False)
    for ax, (modality, methods) in zip(axes[0], table.items()):
        for method, row in methods.items():
            (x, xs), (y, ys) = row["rgb"]["SR"], row["target"]["SR"]
            marker = "*" if method == "srft" else "o"
            ax.errorbar(100 * x, 100 * y, xerr=100 * xs, yerr=100 * ys, fmt=marker, ms=11 if marker == "*" else 6,
                        capsize=3, label=method)
        ax.set_xlabel("RGB SR after fine-tuning (stability)")
        ax.set_ylabel(f"{modality.upper()} SR (plasticity)")
        ax.set_title(f"demo {modality.upper()}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modalities", nargs="+", default=["rgbt", "rgbd", "rgbe"], choices=["rgbt", "rgbd", "rgbe"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: the demo's)")
    parser.add_argument("--eval-sequences", type=int, default=None, help="evaluate on the first N test sequences")
    parser.add_argument("--srft", nargs="*", default=[], type=_parse_override,
                        help="SRFTConfig overrides for the srft* methods, e.g. lambda_prior=3.0 prior_rank=16")
    parser.add_argument("--quick", action="store_true", help="rgbt, srft/full/lora, one seed, 20 steps, 2 sequences")
    parser.add_argument("--out", default="outputs/bench_transfer")
    args = parser.parse_args()
    if args.quick:
        args.modalities, args.methods, args.seeds = ["rgbt"], ["srft", "full", "lora"], [0]
        args.steps, args.eval_sequences = args.steps or 20, args.eval_sequences or 2
    if args.steps is None:
        args.steps = FinetuneConfig().steps
    args.srft = dict(args.srft)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    t0 = time.perf_counter()
    records = [run_one(args, modality, method, seed)
               for modality in args.modalities for seed in args.seeds for method in args.methods]
    table = aggregate(records)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (f"Measured {date.today()} on {platform.machine()} ({torch.get_num_threads()} threads), torch "
              f"{torch.__version__}; {len(args.seeds)} seed(s), {args.steps} steps per run; "
              f"SRFT overrides {args.srft or 'none'}; total {time.perf_counter() - t0:.0f} s.\n")
    text = header + "\n" + markdown(table)
    (out / "transfer.md").write_text(text)
    (out / "transfer.json").write_text(json.dumps({"records": records, "table": table}, indent=2))
    scatter(table, out / "transfer_scatter.png")
    print(text)
    print(f"wrote {out / 'transfer.md'}, {out / 'transfer.json'}, {out / 'transfer_scatter.png'}")


if __name__ == "__main__":
    main()
