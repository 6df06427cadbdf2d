"""The command line of the fine-tuning examples: one flag per :class:`FinetuneConfig` field, ``--srft KEY=VALUE``
for SRFTConfig fields, and :func:`finetune_main`, the examples' entry point."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any

from .config import CLIP_ORDERS, LR_SCHEDULES, RECIPE_PRESETS, FinetuneConfig
from .evaluate import format_results_table
from .finetune import finetune_rgbx
from .methods import METHODS, PRIOR_SCOPES

__all__ = ["build_parser", "config_from_args", "finetune_main", "parse_override"]

CHOICES = {"method": METHODS, "mixed_precision": ("no", "bf16", "fp16"), "clip_order": CLIP_ORDERS,
           "prior_scope": PRIOR_SCOPES, "preset": tuple(RECIPE_PRESETS), "lr_schedule": LR_SCHEDULES}
#: Fields parsed as floats (those whose default None says nothing about the type included).
FLOAT_FIELDS = ("lr", "lora_alpha", "weight_decay", "grad_clip", "center_jitter", "scale_jitter", "kappa_horizon",
                "save_every_minutes", "flip_prob", "crop_flip_prob", "gray_prob", "brightness_jitter",
                "backbone_lr_multiplier", "drop_path", "lr_drop_at", "lr_drop_factor", "ce_start_fraction",
                "ce_warm_fraction")


def parse_override(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, VALUE)``, VALUE parsed as JSON when it is JSON (``"prior_rank=16"`` -> 16), else the
    string; ``argparse.ArgumentTypeError`` without ``=``.

    Example:
        >>> parse_override("prior_rank=16")
        ('prior_rank', 16)
    """
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser(modality: str = "rgbt", description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``examples/finetune_rgb{t,d,e}.py``: one flag per :class:`FinetuneConfig` field."""
    parser = argparse.ArgumentParser(description=description or f"Fine-tune an RGB tracker on {modality.upper()} "
                                     "data (SRFT and baselines) and evaluate it.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = FinetuneConfig(modality=modality, output_dir=f"outputs/finetune_{modality}")
    for f in dataclasses.fields(FinetuneConfig):
        if f.name in ("modality", "srft_overrides"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "default": default}
        if f.name in CHOICES:
            kwargs["choices"] = CHOICES[f.name]
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.name == "resume":
            kwargs.update(nargs="?", const="latest")
        else:
            if f.name in FLOAT_FIELDS:
                kwargs["type"] = float
            elif isinstance(default, int) or f.name in ("eval_sequences", "eval_frames", "template_size",
                                                         "search_size", "num_threads", "val_sequences", "num_workers"):
                kwargs["type"] = int
        parser.add_argument(flag, **kwargs)
    parser.add_argument("--srft", metavar="KEY=VALUE", action="append", type=parse_override, default=[],
                        help="SRFTConfig field on top of the method's preset, e.g. --srft prior_rank=16 (repeatable).")
    parser.set_defaults(modality=modality)
    return parser


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of parsed :func:`build_parser` flags."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig)
              if f.name != "srft_overrides" and hasattr(args, f.name)}
    return FinetuneConfig(**values, srft_overrides=dict(args.srft))


def finetune_main(modality: str, argv: SequenceABC[str] | None = None, description: str | None = None) -> dict:
    """Entry point of the examples: parse flags, run :func:`finetune_rgbx`, print the metrics table (main process)."""
    args = build_parser(modality, description).parse_args(argv)
    cfg = config_from_args(args)
    results = finetune_rgbx(cfg)
    if results:
        print()
        print(f"{results['method']} on {results['dataset']} ({results['data']}), {results['steps']} steps "
              f"in {results['train_time_s']:.0f} s on {results['num_processes']} process(es); prior: {results['prior']}")
        print(format_results_table(results))
        out = Path(cfg.output_dir)
        print(f"\nplots: {out / 'plots'}  (success.png, precision.png, norm_precision.png)")
        print(f"results: {out / 'results.json'}   model: {out / 'model'}   logs: tensorboard --logdir {out}")
    return results
