"""Is there something to protect? Full fine-tuning over a learning-rate range at a given number of steps, scored on
validation only (SR as the mean over sequences: target ``val`` SR and, fed ``[rgb, rgb]``, RGB ``val`` SR), against
the start (the converted model at step 0). The regime the method is for is one where full fine-tuning at its best
target learning rate loses RGB skill: this script prints that loss per modality (issue 17, item 4: >= 5 RGB val SR
points on at least 2 of 3 modalities).

    PYTHONPATH=. python benchmarks/forgetting_regime.py --steps 300 --lrs 2e-4 4e-4 8e-4

Runs use :mod:`transfer`'s run folders (``--out``, reused when their settings match), the tuning seed and the same
settings as its tune stage, so a regime found here is the regime a protocol's tune stage would see. Writes
``regime.md`` and ``regime.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import transfer


def mean_sr(per_sequence: dict[str, dict[str, float]]) -> float:
    """SR (%) as the mean over sequences of their SR (the benchmark's per-sequence unit, also for the start row)."""
    return 100 * sum(s["SR"] for s in per_sequence.values()) / len(per_sequence)


def regime_table(records: list[dict], min_loss: float) -> tuple[str, dict]:
    """Markdown per modality (every lr; the best target-val lr marked) and the verdict numbers."""
    lines, numbers = [], {}
    for m in dict.fromkeys(r["modality"] for r in records):
        mine = [r for r in records if r["modality"] == m]
        for r in mine:
            r["target_sr"], r["rgb_sr"] = mean_sr(r["per_sequence"]["target"]), mean_sr(r["per_sequence"]["rgb"])
        start = next(r for r in mine if r.get("start_target"))
        start_t, start_r = mean_sr(start["start_target"]), mean_sr(start["start_rgb"])
        best = max(mine, key=lambda r: r["target_sr"])
        loss = start_r - best["rgb_sr"]
        numbers[m] = {"start_target_val_sr": start_t, "start_rgb_val_sr": start_r, "best_lr": best["knobs"]["lr"],
                      "target_val_sr": best["target_sr"], "rgb_val_sr": best["rgb_sr"],
                      "rgb_loss": loss, "forgets": loss >= min_loss}
        lines += [f"### {transfer.TITLES[m]}: start {start_t:.1f} target val SR / {start_r:.1f} RGB val SR", "",
                  "| lr | target val SR | RGB val SR | RGB loss vs start | best target |", "|---|---|---|---|---|"]
        for r in sorted(mine, key=lambda r: r["knobs"]["lr"]):
            mark = "✓" if r is best else ""
            lines.append(f"| {r['knobs']['lr']:g} | {r['target_sr']:.1f} | {r['rgb_sr']:.1f} | "
                         f"{start_r - r['rgb_sr']:+.1f} | {mark} |")
        lines.append("")
    forgetting = [m for m, v in numbers.items() if v["forgets"]]
    lines.append(f"Full fine-tuning at its best target-val lr loses >= {min_loss:g} RGB val SR points on "
                 f"{len(forgetting)} of {len(numbers)} modalities ({', '.join(forgetting) or 'none'}).")
    return "\n".join(lines), numbers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (--quick: 2)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 4e-4, 8e-4], help="full fine-tuning's lrs")
    parser.add_argument("--modalities", nargs="+", default=list(transfer.MODALITIES), choices=transfer.MODALITIES)
    parser.add_argument("--min-loss", type=float, default=5.0, help="RGB val SR points that count as forgetting")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--out", default="outputs/forgetting_regime")
    parser.add_argument("--pretrained", default=None, help="RGB tracker folder (default: the shipped demo tracker)")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 steps, rgbt (CI)")
    args = parser.parse_args(argv)
    bench = transfer.parse_args(["--stage", "tune", "--methods", "full", "--modalities", *args.modalities,
                                 "--out", args.out] + (["--quick"] if args.quick else ["--steps", str(args.steps)])
                                + (["--pretrained", args.pretrained] if args.pretrained else []))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data" if args.quick else transfer.default_demo_root()
    data = transfer.build_data(data_dir, bench.modalities, transfer.QUICK_SIZES if args.quick else {})
    runs = [transfer.Run("tune", m, "full", bench.tune_seed, {"lr": lr},
                         transfer.run_settings(bench, data, "tune", m, "full", {"lr": lr}))
            for m in bench.modalities for lr in args.lrs]
    t0 = time.perf_counter()
    records = transfer.run_all(runs, out, args.jobs, evaluate_start=True)
    text, numbers = regime_table(records, args.min_loss)
    header = (f"Full fine-tuning, {bench.steps} steps x {bench.batch_size} pairs, tuning seed {bench.tune_seed}, "
              f"validation only; {time.perf_counter() - t0:.0f} s wall for {len(runs)} runs "
              f"({sum(r['seconds'] for r in records):.0f} s summed).\n")
    (out / "regime.md").write_text(header + "\n" + text)
    (out / "regime.json").write_text(json.dumps({"steps": bench.steps, "lrs": args.lrs, "modalities": numbers},
                                                indent=2))
    print(header + "\n" + text)
    return numbers


if __name__ == "__main__":
    main()
