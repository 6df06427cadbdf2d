"""The ``srft-peft`` command line.

``srft-peft inspect DIR_OR_REPO [--revision R] [--plot out.png]`` prints what a significance checkpoint holds (a header
and a per-parameter table) straight from its files, without the model; ``--plot`` draws it (heat maps of blocks x
parameter roles, retained eigen-spectra: see :mod:`srft_peft.plots`).

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

from .card import describe_entries
from .checkpoint import SignificanceCheckpoint, load_significance_checkpoint
from .model import SummaryTable
from .plots import plot_significance


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


def inspect(args: argparse.Namespace) -> int:
    checkpoint = load_significance_checkpoint(args.checkpoint, args.revision, cache_dir=args.cache_dir)
    table = SummaryTable(checkpoint.prior.summary_rows())
    print(header(checkpoint, args.checkpoint))
    print()
    print(table)
    if args.plot is not None:
        plot_significance(checkpoint.prior, args.plot, f"SRFT prior significance: {args.checkpoint}")
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
    p.add_argument("--plot", type=Path, default=None, metavar="OUT.png",
                   help="also draw the significance (blocks x roles, eigen-spectra)")
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
    except (OSError, ValueError, ImportError) as e:
        print(f"srft-peft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
