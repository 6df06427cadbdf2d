"""Should omega's single global normalizer change? (issue 17, item 2): SRFT at the configuration protocol v5's tune
stage chose per modality, with its prior normalized three ways, scored on validation only.

* ``global`` (the library's): every curvature divided by one constant, the mean retained K-FAC curvature, so a
  tensor's share of the pull follows its own curvature (the RGB patch embedding's omega reaches ~276 x the mean);
* ``per-tensor``: every tensor divided by its own mean, so each tensor's mean curvature is 1 (the directions inside a
  tensor keep their ratios, the tensors lose theirs);
* ``bounded``: the global normalization with every curvature clipped at ``--bound`` (10: ten times the mean).

The rule, stated before the runs: a candidate becomes an option of the library only if its selection score (the mean
of target-val SR and RGB-val SR, the tune stage's) is ahead of ``global``'s on average over the modality x seed cells
with a paired bootstrap 95 % interval above 0. Otherwise nothing changes (the issue allows at most one new option, and
only one that helps).

    PYTHONPATH=. python benchmarks/omega_normalizer.py --jobs 2        # after `benchmarks/transfer.py --stage tune`

The ``global`` runs of the tuning seed are the tune stage's own runs (reused from ``--out``); the others estimate
their prior once per modality x seed, and the candidates load that prior renormalized. Writes ``omega_normalizer.md``
and ``omega_normalizer.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from benchmarks import transfer
from benchmarks.compare import bootstrap_means
from srft_peft.checkpoint import CONFIG_NAME, significance_path, write_checkpoint

VARIANTS = ("global", "per-tensor", "bounded")
CURVATURE_KEYS = (".omega", ".fisher")


def renormalize(values: dict[str, torch.Tensor], variant: str, bound: float) -> dict[str, torch.Tensor]:
    """The curvature tensors (``<name>.omega`` / ``<name>.fisher``, globally normalized) of ``variant``; the others
    (eigenvectors, transfer state) as they are. Computed in float64, stored in the input's dtype.

    Example:
        >>> w = {"a.U": torch.ones(2, 1), "b.fisher": torch.tensor([2.0, 30.0])}
        >>> renormalize(w, "per-tensor", 10.0)["b.fisher"].tolist(), renormalize(w, "bounded", 10.0)["b.fisher"].tolist()
        ([0.125, 1.875], [2.0, 10.0])
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    out = dict(values)
    for key, t in values.items():
        if not key.endswith(CURVATURE_KEYS):
            continue
        w = t.double()
        if variant == "per-tensor":
            mean = float(w.mean()) if w.numel() else 0.0
            w = w / mean if mean > 0 else w
        elif variant == "bounded":
            w = w.clamp(max=bound)
        out[key] = w.to(t.dtype)
    return out


def write_variant(source: Path, target: Path, variant: str, bound: float) -> Path:
    """``source``'s significance checkpoint with its curvatures renormalized as ``variant``, written to ``target``."""
    meta = json.loads((source / CONFIG_NAME).read_text())
    tensors = renormalize(load_file(str(significance_path(source))), variant, bound)
    meta.pop("significance_sha256", None)
    meta.pop("significance_file", None)
    write_checkpoint(target, {k: t.contiguous() for k, t in tensors.items()}, meta)
    return target


def report(records: dict[tuple[str, int, str], dict], modalities: list[str], seeds: list[int]) -> tuple[str, dict]:
    """Markdown table (target-val SR / RGB-val SR / score per cell and variant) and the verdict per candidate."""
    score = {key: 100 * transfer.selection_score(r) for key, r in records.items()}
    lines = ["| modality | seed | " + " | ".join(f"{v}: target / RGB / score" for v in VARIANTS) + " |",
             "|---|---|" + "---|" * len(VARIANTS)]
    for m in modalities:
        for s in seeds:
            cells = [f"{100 * records[m, s, v]['target']['SR']:.1f} / {100 * records[m, s, v]['rgb']['SR']:.1f} / "
                     f"{score[m, s, v]:.1f}" for v in VARIANTS]
            lines.append(f"| {transfer.TITLES[m]} | {s} | " + " | ".join(cells) + " |")
    verdict = {}
    lines.append("")
    for v in VARIANTS[1:]:
        diffs = [score[m, s, v] - score[m, s, "global"] for m in modalities for s in seeds]
        means = bootstrap_means(np.asarray(diffs)[None])  # one row: the cells resampled with replacement
        low, high = (float(q) for q in np.quantile(means, [0.025, 0.975]))
        per_modality = {m: float(np.mean([score[m, s, v] - score[m, s, "global"] for s in seeds])) for m in modalities}
        adopt = low > 0
        verdict[v] = {"mean_difference": float(np.mean(diffs)), "interval": [low, high], "per_modality": per_modality,
                      "adopt": adopt}
        shown = ", ".join(f"{transfer.TITLES[m]} {d:+.1f}" for m, d in per_modality.items())
        lines.append(f"- {v} − global: score {np.mean(diffs):+.2f} points, 95 % interval [{low:+.2f}, {high:+.2f}] "
                     f"over {len(diffs)} cells ({shown}): {'adopt' if adopt else 'not adopted'}")
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/bench_v5", help="the protocol's output folder (tune stage done)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="validation seeds (100: the tune's)")
    parser.add_argument("--bound", type=float, default=10.0, help="the bounded variant's largest curvature")
    parser.add_argument("--modalities", nargs="+", default=list(transfer.MODALITIES), choices=transfer.MODALITIES)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (one thread each)")
    parser.add_argument("--quick", action="store_true", help="tiny data, 2 steps, rgbt (CI)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    bench = transfer.parse_args(["--stage", "tune", "--out", args.out, "--modalities", *args.modalities]
                                + (["--quick"] if args.quick else []))
    data = transfer.build_data(out / "data" if args.quick else transfer.default_demo_root(), bench.modalities,
                               transfer.QUICK_SIZES if args.quick else {})
    tune = json.loads((out / "tune.json").read_text())["chosen"]
    knobs = {m: tune[f"{m} srft"] for m in bench.modalities}

    def run(m: str, seed: int, variant: str, prior: Path | None = None) -> transfer.Run:
        settings = transfer.run_settings(bench, data, "tune", m, "srft", knobs[m])
        if prior is not None:
            settings["prior"] = str(prior)
        stage = "tune" if variant == "global" and seed == bench.tune_seed else "omega"
        label = knobs[m] if variant == "global" else {**knobs[m], "omega": variant}
        return transfer.Run(stage, m, "srft", seed, label, settings)

    t0 = time.perf_counter()
    cells = [(m, s) for m in bench.modalities for s in args.seeds]
    baseline = transfer.run_all([run(m, s, "global") for m, s in cells], out, args.jobs, evaluate_start=False)
    records = {(m, s, "global"): r for (m, s), r in zip(cells, baseline)}
    candidates = []
    for m, s in cells:
        source = out / "runs" / run(m, s, "global").folder / "prior"
        for v in VARIANTS[1:]:
            target = out / "runs" / "omega" / "priors" / f"{m}-seed{s}-{v}"
            candidates.append(((m, s, v), run(m, s, v, write_variant(source, target, v, args.bound))))
    done = transfer.run_all([r for _, r in candidates], out, args.jobs, evaluate_start=False)
    records.update({key: r for (key, _), r in zip(candidates, done)})
    text, verdict = report(records, bench.modalities, args.seeds)
    header = (f"SRFT at v5's tuned configuration ({'; '.join(f'{m}: {transfer.knob_label(k)}' for m, k in knobs.items())}"
              f"), validation only, seeds {args.seeds}, bound {args.bound:g}; {time.perf_counter() - t0:.0f} s wall "
              f"for {len(candidates) + len(cells)} runs (reused ones included).\n")
    (out / "omega_normalizer.md").write_text(header + "\n" + text + "\n")
    (out / "omega_normalizer.json").write_text(json.dumps({"knobs": knobs, "seeds": args.seeds, "bound": args.bound,
                                                           "verdict": verdict}, indent=2))
    print(header + "\n" + text)
    return verdict


if __name__ == "__main__":
    main()
