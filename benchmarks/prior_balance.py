"""How hard does the prior pull against the task? For ``srft-prior-only`` (the prior term alone) at one learning
rate and several ``lambda_prior`` values, plus ``full`` at the same learning rate, record at every optimizer step the
norm of the task gradient and of the prior gradient lambda_p(t) grad R_prior that ``clip_order="total"`` adds before
the clip, and score the run on validation only (target ``val`` SR and RGB ``val`` SR fed ``[rgb, rgb]``), exactly as
the tune stage of ``benchmarks/transfer.py`` runs it (same settings, seed 100).

    PYTHONPATH=. python benchmarks/prior_balance.py --pretrained outputs/tracker_c_1500b32 \\
        --modalities rgbt rgbd --lr 1e-4 --lambdas 0.01 0.1 1 10

The prior is estimated once (the first run) and loaded by the others. Prints a Markdown table per modality (and
writes ``prior_balance.md`` / ``.json`` to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import srft_peft.tracking.train.finetune as finetune_module
from benchmarks.transfer import TITLES, TUNING_SEED, build_data, run_settings
from srft_peft.tracking.demo_data import default_demo_root
from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx

METHOD = "srft-prior-only"
REPORTED_STEPS = (1, 2, 10, 30, 59)


@contextlib.contextmanager
def recording_gradient_norms() -> Iterator[list[tuple[float, float]]]:
    """While active, every optimizer step of :func:`finetune_rgbx` appends (task-gradient norm, prior-gradient norm)
    to the yielded list. The step itself is unchanged: the prior gradient is added here first (as the training loop's
    ``clip_gradients`` does with ``clip_order="total"``; its own call then adds nothing, see
    ``SRFTModel.add_prior_gradient``) and the original function clips."""
    original = finetune_module.clip_gradients
    norms: list[tuple[float, float]] = []

    def recording(accelerator: Any, srft: Any, params: list[torch.nn.Parameter], max_norm: float,
                  clip_order: str) -> None:
        task = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        if srft is not None and clip_order == "total":
            srft.add_prior_gradient()
        prior = [p.grad - t for p, t in zip(params, task) if t is not None]
        task_norm = torch.nn.utils.get_total_norm([t for t in task if t is not None])
        norms.append((float(task_norm), float(torch.nn.utils.get_total_norm(prior))))
        original(accelerator, srft, params, max_norm, clip_order)

    finetune_module.clip_gradients = recording
    try:
        yield norms
    finally:
        finetune_module.clip_gradients = original


def run(args: argparse.Namespace, data: Any, modality: str, method: str, knobs: dict[str, Any], out: Path,
        prior: str | None) -> dict[str, Any]:
    """One fine-tune with the tune stage's settings; its per-step gradient norms and validation scores."""
    settings = run_settings(args, data, "tune", modality, method, knobs)
    label = "_".join(f"{k}{v:g}" for k, v in knobs.items())
    cfg = FinetuneConfig(method=method, modality=modality, seed=args.seed, output_dir=str(out / f"{modality}-{method}-"
                         f"{label}"), evaluate_rgb=True, report_to=None, save_every=0, progress=False, num_threads=1,
                         prior=prior, **settings)
    with recording_gradient_norms() as norms:
        results = finetune_rgbx(cfg)
    return {"modality": modality, "method": method, "knobs": knobs, "norms": norms,
            "target_sr": 100 * results["metrics"]["SR"], "rgb_sr": 100 * results["rgb_metrics"]["SR"],
            "prior_dir": str(Path(cfg.output_dir) / "prior") if method == METHOD else None}


def format_rows(rows: list[dict[str, Any]]) -> str:
    steps = [s for s in REPORTED_STEPS if all(s < len(r["norms"]) for r in rows)]
    lines = ["| run | median task-grad norm | " + " | ".join(f"prior-grad norm, step {s}" for s in steps)
             + " | median prior / task | target val SR | RGB val SR |", "|---" * (len(steps) + 5) + "|"]
    for r in rows:
        task = [t for t, _ in r["norms"]]
        ratio = [p / t for t, p in r["norms"] if t > 0]
        name = r["method"] if r["method"] != METHOD else f"{METHOD} λ={r['knobs']['lambda_prior']:g}"
        lines.append(f"| {name} | {statistics.median(task):.3f} | "
                     + " | ".join(f"{r['norms'][s][1]:.3f}" for s in steps)
                     + f" | {statistics.median(ratio):.2f} | {r['target_sr']:.1f} | {r['rgb_sr']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="the RGB tracker folder (as the benchmark's)")
    parser.add_argument("--modalities", nargs="+", default=["rgbt", "rgbd"], choices=list(TITLES))
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--seed", type=int, default=TUNING_SEED)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prior-batches", type=int, default=8)
    parser.add_argument("--eval-frames", type=int, default=12)
    parser.add_argument("--data-dir", default=None, help="where the demo v2 sets are (default: the demo root)")
    parser.add_argument("--out", default="outputs/prior_balance")
    args = parser.parse_args(argv)
    bad = [lam for lam in args.lambdas if not lam > 0]
    if bad:
        parser.error(f"--lambdas must be positive, got {bad}")
    args.set, args.eval_every, args.val_sequences = {}, 10, None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build_data(Path(args.data_dir) if args.data_dir else default_demo_root(), args.modalities, {})
    tables, results, prior = [], {}, None
    for modality in args.modalities:
        rows = [run(args, data, modality, "full", {"lr": args.lr}, out, None)]
        for lam in args.lambdas:
            rows.append(run(args, data, modality, METHOD, {"lr": args.lr, "lambda_prior": lam}, out, prior))
            prior = prior or rows[-1]["prior_dir"]  # the prior is calibrated on RGB: one for every run
        results[modality] = rows
        tables.append(f"### {TITLES[modality]}, lr {args.lr:g}, seed {args.seed} (validation)\n\n{format_rows(rows)}\n")
        print(tables[-1], flush=True)
    (out / "prior_balance.md").write_text("\n".join(tables))
    (out / "prior_balance.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
