"""The ``srft-peft`` command line.

``srft-peft inspect DIR_OR_REPO [--revision R] [--plot out.png]`` prints what a significance checkpoint holds (a header
and a per-parameter table) straight from its files, without the model; ``--plot`` draws the mean significance per
parameter (log scale, coloured by kind).

Example:
    >>> main(["inspect", "/no/such/folder"])  # doctest: +SKIP
    srft-peft: error: no folder '/no/such/folder' (and it is not a valid Hugging Face Hub repo id)
    2
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from .checkpoint import SignificanceCheckpoint, describe_entries, load_significance_checkpoint
from .model import SummaryTable

KIND_COLOURS = {"kfac": "tab:blue", "diagonal": "tab:orange"}


def header(checkpoint: SignificanceCheckpoint, source: str) -> str:
    """The essentials of a checkpoint: version, base model, estimator, calibration, schedule, fingerprint, transfer."""
    meta, cfg = checkpoint.metadata, checkpoint.config
    base = meta.get("base_model") or {}
    cal = meta.get("calibration") or {}
    transfer = "not included"
    if checkpoint.step is not None:
        transfer = f"step {checkpoint.step}" + (", v for every parameter" if checkpoint.transfer_v else ", no v")
    rows = [
        ("checkpoint", source if Path(source) == checkpoint.folder else f"{source} ({checkpoint.folder})"),
        ("library", f"srft-peft {meta.get('library_version', '?')}, format {meta['format_version']}"),
        ("base model", f"{base.get('name', '?')}" + (f" @ {base['revision']}" if base.get("revision") else "")
         + f" ({base.get('class', '?')})"),
        ("estimator", f"{cfg.prior_estimator}, prior_rank={cfg.prior_rank}, prior_energy={cfg.prior_energy}"),
        ("calibration", f"{cal.get('num_examples', '?')} examples in {cal.get('num_batches', '?')} batches, "
                        f"objective {cal.get('objective', '?')}"),
        ("normalizer c", f"{checkpoint.prior.normalizer:.6g}"),
        ("schedule", f"{cfg.kappa_shape} kappa {cfg.kappa_start} -> {cfg.kappa_end}, lambda_prior={cfg.lambda_prior}, "
                     f"lambda_transfer={cfg.lambda_transfer}, total_steps={cfg.total_steps}, apply={cfg.apply}"),
        ("parameters", describe_entries(meta["entries"])),
        ("fingerprint", meta["fingerprint"]),
        ("transfer state", transfer),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def plot_significance(table: SummaryTable, path: Path, title: str) -> None:
    """Bar chart of the mean significance per parameter (log scale, coloured by kind; dots mark the max)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = [row["name"] for row in table]
    x = range(len(names))
    fig = Figure(figsize=(max(6.0, 0.3 * len(names) + 2.0), 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x, [row["mean"] for row in table], color=[KIND_COLOURS[row["kind"]] for row in table])
    maxima = ax.scatter(x, [row["max"] for row in table], color="black", s=8, zorder=3, label="max")
    ax.set_yscale("log")
    ax.set_xticks(list(x), names, rotation=90, fontsize=7)
    ax.set_ylabel("prior significance (normalized)")
    ax.set_title(title)
    kinds = [Patch(color=c, label=f"{k} (mean)") for k, c in KIND_COLOURS.items() if any(r["kind"] == k for r in table)]
    ax.legend(handles=kinds + [maxima], fontsize=8)
    fig.savefig(path, dpi=120)


def inspect(args: argparse.Namespace) -> int:
    checkpoint = load_significance_checkpoint(args.checkpoint, args.revision, cache_dir=args.cache_dir)
    table = SummaryTable(checkpoint.prior.summary_rows())
    print(header(checkpoint, args.checkpoint))
    print()
    print(table)
    if args.plot is not None:
        plot_significance(table, args.plot, f"SRFT prior significance: {args.checkpoint}")
        print(f"\nplot written to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srft-peft", description="Significance-Regularized Fine-Tuning tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = commands.add_parser("inspect", help="show what a significance checkpoint holds (no model needed)",
                            description="Print the header and per-parameter table of a significance checkpoint.")
    p.add_argument("checkpoint", metavar="DIR_OR_REPO", help="a folder written by save_pretrained or a Hub repo id")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit); ignored for a folder")
    p.add_argument("--cache-dir", default=None, help="Hugging Face cache folder (default: HF_HUB_CACHE)")
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png", help="also draw the significance per layer")
    p.set_defaults(run=inspect)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``srft-peft``; returns the exit code (2 on bad input).

    Example:
        >>> main(["inspect", "ostrack256-rgb-significance", "--plot", "significance.png"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on bad usage (2) and after --help (0)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except (OSError, ValueError) as e:
        print(f"srft-peft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
