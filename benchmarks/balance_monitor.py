"""The balance monitor in a real run: the demo RGB-T fine-tune (``examples/finetune_rgbt.py``'s recipe, fewer steps)
under each ``prior_application``, its ``srft/*`` logs recorded through an accelerate tracker and drawn in one figure.

    python benchmarks/balance_monitor.py --out docs/balance_monitor.png            # the docs' figure
    python benchmarks/balance_monitor.py --steps 30 --runs gradient:10 proximal:1000

Each run logs, every optimizer step, the norms of the task update, the prior's pull (or proximal shrink), the transfer
damping and the drift along the kept directions (``SRFTConfig.monitor_balance``; see docs/concepts.md). The recipe
logs them to its accelerate trackers; here one more tracker keeps them in memory for the plot. Validation and the
RGB retention evaluation are off and the test evaluation is cut to one short sequence: only the training curves count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

KEYS = ("task_update", "prior", "damping", "drift")


def recording_tracker(store: dict[int, dict[str, float]]) -> Any:
    """An accelerate tracker that keeps every logged value in ``store`` (step -> {name: value})."""
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name = "balance-recorder"
        requires_logging_directory = False

        def __init__(self) -> None:
            super().__init__()

        @property
        def tracker(self) -> Any:
            return store

        def store_init_configuration(self, values: dict) -> None:
            pass

        def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
            store.setdefault(int(step or 0), {}).update({k: float(v) for k, v in values.items()})

    return Recorder()


def run(mode: str, lambda_prior: float, steps: int, lr: float, output_dir: Path) -> dict[int, dict[str, float]]:
    """One demo RGB-T fine-tune with the monitor on; the recorded logs by step."""
    from accelerate import Accelerator

    from srft_peft.tracking.train import FinetuneConfig, finetune_rgbx

    store: dict[int, dict[str, float]] = {}
    cfg = FinetuneConfig(modality="rgbt", method="srft", steps=steps, lr=lr, log_every=1, eval_every=0,
                         eval_sequences=1, eval_frames=5, evaluate_rgb=False, evaluate_baseline=False,
                         evaluate_rgb_tracker=False, output_dir=str(output_dir), report_to="tensorboard", progress=False,
                         srft_overrides={"prior_application": mode, "lambda_prior": lambda_prior,
                                         "monitor_balance": True})
    accelerator = Accelerator(log_with=[recording_tracker(store)])  # replaces the recipe's TensorBoard tracker
    finetune_rgbx(cfg, accelerator=accelerator)
    return store


def plot(results: dict[str, dict[int, dict[str, float]]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 3.8), sharey=True, squeeze=False)
    for ax, (label, store) in zip(axes[0], results.items()):
        steps = sorted(s for s in store if any(f"srft/{k}" in store[s] for k in KEYS))
        for key in KEYS:
            ax.plot(steps, [store[s].get(f"srft/{key}", float("nan")) for s in steps], label=key)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("norm over the regularized parameters")
    axes[0][-1].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--runs", nargs="+", default=["gradient:10", "proximal:1000"], metavar="MODE:LAMBDA",
                        help="prior_application and lambda_prior of each run (default: the pilot's RGB-E values)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per run (the demo's default is 60)")
    parser.add_argument("--lr", type=float, default=4e-4, help="learning rate (eta in eta * lambda_p * omega)")
    parser.add_argument("--out", type=Path, default=Path("balance_monitor.png"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs:
            mode, lam = spec.split(":")
            store = run(mode, float(lam), args.steps, args.lr, Path(tmp) / mode)
            results[f"{mode}, lambda_prior={lam}"] = store
    plot(results, args.out, f"SRFT balance monitor: demo RGB-T, {args.steps} steps, lr {args.lr:g}")
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
