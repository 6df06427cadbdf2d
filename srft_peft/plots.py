"""A picture of a prior significance, readable at a glance (``srft-peft inspect DIR --plot out.png``).

Top: one heat map per group of blocks (e.g. a tracker's RGB stream, its X stream and the fusion blocks, side by side),
blocks down, parameter roles across, coloured by the mean normalized significance (one log colour scale for all).
Bottom left: the retained eigen-spectra (the K-FAC curvatures omega, largest first) of the first and last block of each
group's most significant K-FAC role. Bottom right: the parameters outside the blocks (embeddings, final norm).
About 1000 px wide.

Example:
    >>> plot_significance(checkpoint.prior, "significance.png", "OSTrack-256 on RGB")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from .significance.prior import KFACSignificance, PriorSignificance

__all__ = ["block_layout", "plot_significance"]

#: Module-list names between a group and its block index (``backbone.blocks.3``, ``vit.encoder.layer.3``).
CONTAINERS = ("blocks", "block", "layers", "layer", "h")
KIND_COLOURS = {"kfac": "tab:blue", "diagonal": "tab:orange"}
#: Eigen-spectra drawn at most.
MAX_SPECTRA = 6


def split_block_name(name: str) -> Optional[tuple[str, int, str]]:
    """``(group, block, role)`` of a parameter inside a numbered block, else ``None``.

    Example:
        >>> split_block_name("backbone_x.blocks.3.attn.qkv.weight"), split_block_name("fusion.0.mlp.fc2.bias")
        (('backbone_x', 3, 'attn.qkv.weight'), ('fusion', 0, 'mlp.fc2.bias'))
        >>> split_block_name("pos_embed") is None, split_block_name("blocks.1.norm1.weight")[0]
        (True, 'model')
    """
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            group = parts[:i - 1] if i and parts[i - 1] in CONTAINERS else parts[:i]
            return ".".join(group) or "model", int(part), ".".join(parts[i + 1:])
    return None


def short_roles(roles: list[str]) -> dict[str, str]:
    """Each role's shortest unique dotted suffix of at least two parts, ``.weight``/``.bias`` written ``w``/``b``.

    Example:
        >>> short_roles(["attn.qkv.weight", "mlp.fc1.bias", "attention.output.dense.weight",
        ...              "output.dense.weight"])["attention.output.dense.weight"]
        'attention.output.dense w'
    """
    out = {}
    for role in roles:
        parts = role.split(".")
        for n in range(min(2, len(parts)), len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(r == suffix or r.endswith("." + suffix) for r in roles) == 1:
                break
        out[role] = suffix.removesuffix(".weight") + " w" if suffix.endswith(".weight") else (
            suffix.removesuffix(".bias") + " b" if suffix.endswith(".bias") else suffix)
    return out


def block_layout(prior: PriorSignificance) -> tuple[dict[str, dict[tuple[int, str], float]], dict[str, float]]:
    """Mean significance per (block, role) of every group, and per parameter outside the blocks."""
    groups: dict[str, dict[tuple[int, str], float]] = {}
    others: dict[str, float] = {}
    for name, entry in prior.entries.items():
        mean = float(entry.significance_values().float().mean())
        where = split_block_name(name)
        if where is None:
            others[name] = mean
        else:
            group, block, role = where
            groups.setdefault(group, {})[(block, role)] = mean
    return groups, others


def _pyplot_free_figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # matplotlib is the `plot` extra
        raise ImportError("drawing the significance needs matplotlib: pip install 'srft-peft[plot]'") from e
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _heat_maps(subfig: Any, groups: dict[str, dict[tuple[int, str], float]], norm: Any) -> None:
    import matplotlib
    import numpy as np

    cmap = matplotlib.colormaps["viridis"].with_extremes(under="white")

    roles_by_group = {g: list(dict.fromkeys(role for _, role in cells)) for g, cells in groups.items()}
    labels = short_roles(list(dict.fromkeys(r for roles in roles_by_group.values() for r in roles)))
    blocks = max(block for cells in groups.values() for block, _ in cells) + 1
    axes = subfig.subplots(1, len(groups), sharey=True, squeeze=False,
                           width_ratios=[len(r) for r in roles_by_group.values()])[0]
    image = None
    for ax, (group, cells) in zip(axes, groups.items()):
        roles = roles_by_group[group]
        grid = np.full((blocks, len(roles)), np.nan)
        for (block, role), mean in cells.items():
            grid[block, roles.index(role)] = mean if mean > 0 else norm.vmin / 2  # zero: the "under" colour
        image = ax.imshow(np.ma.masked_invalid(grid), norm=norm, cmap=cmap, aspect="auto", interpolation="none")
        ax.set_xticks(range(len(roles)), [labels[r] for r in roles], rotation=90, fontsize=7)
        ax.set_title(group, fontsize=9)
        ax.set_facecolor("0.85")  # parameters a group does not have
    axes[0].set_ylabel("block")
    axes[0].set_yticks(range(blocks))
    subfig.colorbar(image, ax=list(axes), label="mean significance (normalized)\nwhite: zero, grey: no such parameter",
                    shrink=0.9, extend="min")


def _spectra(ax: Any, prior: PriorSignificance, groups: dict[str, dict[tuple[int, str], float]]) -> None:
    """The omega of the first and last block of each group's most significant K-FAC role, largest first."""
    names = []
    for group, cells in groups.items():
        kfac = {(b, r): m for (b, r), m in cells.items() if isinstance(_entry(prior, group, b, r), KFACSignificance)}
        if not kfac:
            continue
        roles = {r for _, r in kfac}
        role = max(roles, key=lambda r: sum(m for (_, rr), m in kfac.items() if rr == r))
        blocks = sorted(b for b, r in kfac if r == role)
        names += [_name(prior, group, b, role) for b in dict.fromkeys((blocks[0], blocks[-1]))]
    if not names:  # no numbered blocks: the K-FAC entries in order
        names = [n for n, e in prior.entries.items() if isinstance(e, KFACSignificance)]
    for name in names[:MAX_SPECTRA]:
        omega = prior.entries[name].omega.detach().float().flatten().sort(descending=True).values
        ax.plot(range(1, omega.numel() + 1), omega.clamp_min(1e-12).cpu().numpy(), label=name, lw=1.4)
    ax.set_yscale("log")
    ax.set_xlabel("retained direction (largest first)")
    ax.set_ylabel("curvature omega (normalized)")
    ax.set_title("retained eigen-spectra", fontsize=9)
    if names:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no K-FAC entries", ha="center", va="center", transform=ax.transAxes)


def _entry(prior: PriorSignificance, group: str, block: int, role: str) -> Any:
    return prior.entries[_name(prior, group, block, role)]


def _name(prior: PriorSignificance, group: str, block: int, role: str) -> str:
    return next(n for n in prior.entries if split_block_name(n) == (group, block, role))


def _others(ax: Any, prior: PriorSignificance, others: dict[str, float], norm: Any) -> None:
    """Bars on the heat maps' scale."""
    from matplotlib.ticker import LogLocator, NullFormatter

    names = list(others)
    ax.barh(range(len(names)), [others[n] for n in names],
            color=[KIND_COLOURS[prior.entries[n].kind] for n in names])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(norm.vmin / 3, norm.vmax * 1.5)  # the smallest value still shows as a bar
    ax.xaxis.set_major_locator(LogLocator(numticks=6))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("mean significance (blue K-FAC, orange diagonal)", fontsize=8)
    ax.set_title("outside the blocks", fontsize=9)


def plot_significance(prior: PriorSignificance, path: Union[str, Path], title: str) -> Path:
    """Draw ``prior`` (heat maps of blocks x roles, eigen-spectra, the rest) into the PNG ``path``; returns it."""
    groups, others = block_layout(prior)
    fig = _pyplot_free_figure(10.0, 7.4 if groups else 3.2 + 0.12 * len(others))
    from matplotlib.colors import LogNorm

    means = [m for cells in groups.values() for m in cells.values()] + list(others.values())
    positive = [m for m in means if m > 0] or [1.0]
    norm = LogNorm(vmin=min(positive), vmax=max(max(positive), min(positive) * 10))
    fig.suptitle(title, fontsize=10)
    if groups:
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.2, 3.2])
        _heat_maps(top, groups, norm)
    else:
        bottom = fig
    if others:
        spectra_ax, others_ax = bottom.subplots(1, 2, width_ratios=[3, 2])
        _others(others_ax, prior, others, norm)
    else:
        spectra_ax = bottom.subplots()
    _spectra(spectra_ax, prior, groups)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
