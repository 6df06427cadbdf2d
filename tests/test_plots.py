"""The significance picture: blocks x roles per group, eigen-spectra, the rest; about 1000 px wide whatever the size."""

from __future__ import annotations

import sys

import pytest
import torch
from PIL import Image

from srft_peft.cli import main
from srft_peft.plots import block_layout, plot_significance
from srft_peft.significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance

ROLES = {"attn.qkv.weight": "kfac", "attn.qkv.bias": "diag", "attn.proj.weight": "kfac", "mlp.fc1.weight": "kfac",
         "mlp.fc2.weight": "kfac", "norm1.weight": "diag", "norm2.weight": "diag"}


def tracker_prior(depth: int = 12) -> PriorSignificance:
    """A prior shaped like a dual-stream tracker's: two streams of ``depth`` blocks, ``depth`` fusion blocks (no
    biases), embeddings outside the blocks; block b's significance is 10**-b so the rows are easy to tell apart."""
    g = torch.Generator().manual_seed(0)
    entries = {}
    for group, prefix in (("backbone", "backbone.blocks"), ("backbone_x", "backbone_x.blocks"), ("fusion", "fusion")):
        for b in range(depth):
            for role, kind in ROLES.items():
                if group == "fusion" and role.endswith("bias"):
                    continue
                name = f"{prefix}.{b}.{role}"
                if kind == "kfac":
                    omega = torch.rand(4, 4, generator=g) * 10.0 ** -b
                    entries[name] = KFACSignificance(name, torch.eye(8, 4), torch.eye(8, 4), omega, 0.9)
                else:
                    entries[name] = DiagonalSignificance(name, torch.full((8,), 10.0 ** -b))
    for name in ("backbone.pos_embed", "backbone.patch_embed.proj.weight", "backbone_x.patch_embed.proj.weight"):
        entries[name] = DiagonalSignificance(name, torch.rand(8, generator=g), "per_batch")
    return PriorSignificance(entries)


def test_layout_groups_blocks_and_roles():
    groups, others = block_layout(tracker_prior(depth=3))
    assert list(groups) == ["backbone", "backbone_x", "fusion"]
    assert len(groups["backbone"]) == 3 * len(ROLES) and len(groups["fusion"]) == 3 * (len(ROLES) - 1)
    assert groups["backbone_x"][(2, "norm1.weight")] == pytest.approx(1e-2)
    assert set(others) == {"backbone.pos_embed", "backbone.patch_embed.proj.weight",
                           "backbone_x.patch_embed.proj.weight"}


@pytest.mark.parametrize("depth", [2, 12])
def test_picture_is_about_1000_px_wide_whatever_the_number_of_tensors(depth, tmp_path):
    path = plot_significance(tracker_prior(depth), tmp_path / "sig.png", "tracker")
    with Image.open(path) as image:
        width, height = image.size
    assert width == 1000 and 600 <= height <= 800  # 12 blocks: 3 * 12 * 7 - 12 = 240 tensors, same size


def test_a_model_without_numbered_blocks_still_draws(tmp_path, monkeypatch):
    """No numbered blocks: no heat maps; a bar per parameter (its mean significance, coloured by kind) and the
    K-FAC entry's spectrum, largest first."""
    from matplotlib.colors import to_rgba

    import srft_peft.plots as plots

    omega = torch.tensor([[3.0, 1.0], [0.5, 2.0]])
    prior = PriorSignificance({"fc.weight": KFACSignificance("fc.weight", torch.eye(4, 2), torch.eye(4, 2), omega),
                               "fc.bias": DiagonalSignificance("fc.bias", torch.tensor([1.0, 2.0, 3.0, 6.0]))})
    figures = []
    make_figure = plots._pyplot_free_figure
    monkeypatch.setattr(plots, "_pyplot_free_figure", lambda *a: figures.append(make_figure(*a)) or figures[-1])
    with Image.open(plot_significance(prior, tmp_path / "mlp.png", "mlp")) as image:
        assert image.size[0] == 1000
    (fig,) = figures
    assert fig.get_suptitle() == "mlp"
    spectra, bars = fig.axes  # no heat maps, no colorbar
    assert [t.get_text() for t in bars.get_yticklabels()] == ["fc.weight", "fc.bias"]
    means = block_layout(prior)[1]
    assert [p.get_width() for p in bars.patches] == pytest.approx([means["fc.weight"], means["fc.bias"]])
    assert means["fc.bias"] == pytest.approx(3.0)
    assert [p.get_facecolor() for p in bars.patches] == [to_rgba(plots.KIND_COLOURS[k]) for k in ("kfac", "diagonal")]
    (line,) = spectra.get_lines()
    assert line.get_label() == "fc.weight" and list(line.get_ydata()) == [3.0, 2.0, 1.0, 0.5]


def test_plot_without_matplotlib_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from checkpoint_helpers import make_srft

    make_srft().save_pretrained(tmp_path / "sig")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    assert main(["inspect", str(tmp_path / "sig"), "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'srft-peft[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
