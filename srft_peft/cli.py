"""The ``srft-peft`` command line.

``srft-peft inspect DIR_OR_REPO [--revision R] [--plot out.png] [--lr LR [--lambda-prior L] [--omega-max W]]``
prints what a significance checkpoint holds (a header and a per-parameter table) straight from its files, without the
model;
``--plot`` draws it (heat maps of blocks x parameter roles, retained eigen-spectra: see :mod:`srft_peft.plots`);
``--lr`` adds the share of the drift that the decoupled and proximal prior remove per step along each direction,
eta lambda_p omega and eta lambda_p omega / (1 + eta lambda_p omega), at kappa = 1.

Example:
    >>> main(["inspect", "/no/such/folder"])  # doctest: +SKIP
    srft-peft: error: no folder '/no/such/folder' (and it is not a valid Hugging Face Hub repo id)
    2
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from .card import describe_entries
from .checkpoint import SignificanceCheckpoint, load_significance_checkpoint
from .model import SummaryTable
from .plots import plot_significance
from .significance.prior import KFACSignificance, PriorSignificance


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


def shrink_shares(prior: PriorSignificance, lr: float, lambda_prior: float) -> tuple[list[dict], dict]:
    """Per parameter (and over all directions together): min / median / max of the share of the drift along a kept
    direction that one step removes at kappa = 1, c = lr * lambda_prior, under ``prior_application="decoupled"`` (c
    omega; above 1 it overshoots theta0, above 2 it diverges) and ``"proximal"`` (c omega / (1 + c omega)).

    Example:
        >>> import torch
        >>> from srft_peft.significance import DiagonalSignificance
        >>> rows, total = shrink_shares(PriorSignificance({"b": DiagonalSignificance("b", torch.tensor([1.0, 3.0]))}),
        ...                             lr=0.5, lambda_prior=1.0)
        >>> rows[0]["decoupled_max"], rows[0]["proximal_max"]
        (1.5, 0.6)
    """
    import torch

    c = lr * lambda_prior
    rows, values = [], []
    for name, e in prior.entries.items():
        share = e.significance_values().double().reshape(-1) * c
        values.append(share)
        rows.append({"name": name, "kind": "kfac" if isinstance(e, KFACSignificance) else "diagonal",
                     "directions": share.numel(), **_share_columns(share)})
    every = torch.cat(values)
    total = {"name": "all", "kind": "-", "directions": every.numel(), **_share_columns(every)}
    return rows, total


class ShareTable(SummaryTable):
    """Rows of :func:`shrink_shares`, rendered as an aligned table."""

    columns = ("name", "kind", "directions", "decoupled_min", "decoupled_median", "decoupled_max", "proximal_min",
               "proximal_median", "proximal_max")


def _share_columns(share: Any) -> dict[str, float]:
    prox = share / (1.0 + share)
    return {"decoupled_min": float(share.min()), "decoupled_median": float(share.median()),
            "decoupled_max": float(share.max()), "proximal_min": float(prox.min()),
            "proximal_median": float(prox.median()), "proximal_max": float(prox.max())}


def print_shares(checkpoint: SignificanceCheckpoint, lr: float, lambda_prior: Optional[float],
                 omega_max: Optional[float] = None) -> None:
    lam = checkpoint.config.lambda_prior if lambda_prior is None else lambda_prior
    for name, value in (("--lr", lr), ("--lambda-prior", lam)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    clip = checkpoint.config.omega_max if omega_max is None else omega_max
    if clip is not None and not (math.isfinite(clip) and clip > 0):
        raise ValueError(f"--omega-max must be a finite positive number, got {clip!r}")
    rows, total = shrink_shares(checkpoint.prior.clipped(clip), lr, lam)
    over = sum(1 for r in rows if r["decoupled_max"] > 1.0)
    clipped = "" if clip is None else f", omega clipped at {clip:g}"
    print(f"\nshare of the drift along a direction removed per step at lr={lr:g}, lambda_prior={lam:g}, kappa=1"
          f"{clipped}\n"
          "(decoupled: lr*lambda*omega; proximal: lr*lambda*omega / (1 + lr*lambda*omega)); "
          f"{over} of {len(rows)} parameters have decoupled shares above 1 (overshoot; above 2 diverges)")
    print(ShareTable(rows + [total]))


def inspect(args: argparse.Namespace) -> int:
    checkpoint = load_significance_checkpoint(args.checkpoint, args.revision, cache_dir=args.cache_dir)
    table = SummaryTable(checkpoint.prior.summary_rows())
    print(header(checkpoint, args.checkpoint))
    print()
    print(table)
    if args.lr is not None:
        print_shares(checkpoint, args.lr, args.lambda_prior, args.omega_max)
    elif args.lambda_prior is not None or args.omega_max is not None:
        flag = "--lambda-prior" if args.lambda_prior is not None else "--omega-max"
        raise ValueError(f"{flag} needs --lr (the shares are lr * lambda_prior * omega)")
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
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="also print, per parameter, the share of the drift the decoupled and proximal prior remove "
                        "per step at this learning rate (lr * lambda_prior * omega and its proximal form, kappa = 1)")
    p.add_argument("--lambda-prior", type=float, default=None, metavar="L",
                   help="lambda_prior for --lr (default: the checkpoint's config)")
    p.add_argument("--omega-max", type=float, default=None, metavar="W",
                   help="omega_max for --lr: curvatures above it clipped, as training clips them (default: the "
                        "checkpoint's config)")
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
