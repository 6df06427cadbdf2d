"""Success and precision plots (PNG, matplotlib Agg) for one or several trackers.

Example:
    >>> s = evaluate_results(seqs, results)  # doctest: +SKIP
    >>> plot_success({"SRFT": s["success_curve"], "base": base["success_curve"]}, "success.png")  # doctest: +SKIP
    >>> plot_precision({"SRFT": s, "base": base}, "precision.png")  # summaries work too  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import PRECISION_THRESHOLDS, SUCCESS_THRESHOLDS, auc, curve_value

__all__ = ["plot_success", "plot_precision", "plot_summaries"]


def _curve(name: str, value: Any, key: str, default_thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accept a curve, a ``(thresholds, curve)`` pair or an ``evaluate_results`` summary."""
    if isinstance(value, Mapping):
        if key not in value:
            raise KeyError(f"summary for {name!r} has no {key!r}")
        thr_key = key.replace("_curve", "_thresholds")
        return np.asarray(value.get(thr_key, default_thresholds), float), np.asarray(value[key], float)
    if isinstance(value, tuple) and len(value) == 2:
        return np.asarray(value[0], float), np.asarray(value[1], float)
    curve = np.asarray(value, float)
    if curve.shape != default_thresholds.shape:
        raise ValueError(
            f"curve for {name!r} has {curve.shape[0] if curve.ndim else 0} points; pass (thresholds, curve) when "
            f"not using the default {default_thresholds.size} thresholds"
        )
    return default_thresholds, curve


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.0)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_success(curves: Mapping[str, Any], path: str | Path, title: str = "Success plot") -> Path:
    """Success plot (fraction of frames with IoU > τ) with the AUC (SR) in the legend, best tracker first.

    ``curves`` maps a tracker name to a 21-point curve, a ``(thresholds, curve)`` pair or an ``evaluate_results``
    summary.
    """
    if not curves:
        raise ValueError("plot_success needs at least one curve")
    items = [(name, *_curve(name, v, "success_curve", SUCCESS_THRESHOLDS)) for name, v in curves.items()]
    items.sort(key=lambda it: -auc(it[2]))
    fig, ax = _figure(title, "Overlap threshold", "Success rate")
    ax.set_xlim(0, 1)
    for name, thr, curve in items:
        ax.plot(thr, curve, linewidth=2, label=f"{name} [{auc(curve):.3f}]")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_precision(
    curves: Mapping[str, Any],
    path: str | Path,
    at: float = 20.0,
    title: str = "Precision plot",
    key: str = "precision_curve",
) -> Path:
    """Precision plot (fraction of frames with centre error <= θ px) with PR@``at`` in the legend.

    ``key`` picks the summary entry when summaries are given (e.g. ``"max_precision_curve"`` for MPR or
    ``"norm_precision_curve"`` with ``at=0.2``).
    """
    if not curves:
        raise ValueError("plot_precision needs at least one curve")
    normalised = key.startswith("norm")
    default = np.linspace(0.0, 0.5, 51) if normalised else PRECISION_THRESHOLDS
    items = [(name, *_curve(name, v, key, default)) for name, v in curves.items()]
    items = [(name, thr, c, curve_value(c, thr, at)) for name, thr, c in items]
    items.sort(key=lambda it: -it[3])
    xlabel = "Normalised location error threshold" if normalised else "Location error threshold (px)"
    fig, ax = _figure(title, xlabel, "Precision")
    ax.set_xlim(float(items[0][1][0]), float(items[0][1][-1]))
    for name, thr, curve, value in items:
        ax.plot(thr, curve, linewidth=2, label=f"{name} [{value:.3f}]")
    ax.axvline(at, color="gray", linestyle=":", linewidth=1)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_summaries(
    summaries: Mapping[str, Mapping[str, Any]], out_dir: str | Path, prefix: str = ""
) -> dict[str, Path]:
    """Success, precision and normalised-precision plots for ``{tracker: evaluate_results summary}``."""
    out_dir = Path(out_dir)
    first = next(iter(summaries.values()))
    at = float(first.get("pr_threshold", 20.0))
    return {
        "success": plot_success(summaries, out_dir / f"{prefix}success.png"),
        "precision": plot_precision(summaries, out_dir / f"{prefix}precision.png", at=at),
        "norm_precision": plot_precision(
            summaries,
            out_dir / f"{prefix}norm_precision.png",
            at=0.2,
            title="Normalised precision plot",
            key="norm_precision_curve",
        ),
    }
