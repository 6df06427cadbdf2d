"""``srft-peft inspect --lr``: the per-step shrink shares of the decoupled and proximal prior, from the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from srft_peft.checkpoint import load_significance_checkpoint
from srft_peft.cli import main
from srft_peft.significance import KFACSignificance


def table(out: str) -> dict[str, list[str]]:
    lines = out.split("decoupled_min", 1)[1].splitlines()[2:]
    return {line.split()[0]: line.split() for line in lines if line.strip()}


def test_inspect_prints_the_shares_of_each_parameter(saved: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(saved), "--lr", "4e-4", "--lambda-prior", "2500"]) == 0
    out = capsys.readouterr().out
    assert "lr=0.0004, lambda_prior=2500, kappa=1" in out
    rows = table(out)
    prior = load_significance_checkpoint(saved).prior
    assert set(rows) == set(prior.entries) | {"all"}
    for name, e in prior.entries.items():
        omega = (e.omega if isinstance(e, KFACSignificance) else e.fisher).double().reshape(-1)
        share = 4e-4 * 2500 * omega
        prox = share / (1 + share)
        want = [share.min(), share.median(), share.max(), prox.min(), prox.median(), prox.max()]
        assert rows[name][2] == str(omega.numel())
        assert [float(v) for v in rows[name][3:]] == pytest.approx([float(w) for w in want], rel=1e-3), name
    shares = torch.cat([(e.omega if isinstance(e, KFACSignificance) else e.fisher).double().reshape(-1)
                        for e in prior.entries.values()])
    assert float(rows["all"][5]) == pytest.approx(float(shares.max()), rel=1e-3)
    over = sum(1 for r in rows.values() if r[0] != "all" and float(r[5]) > 1)
    assert f"{over} of {len(prior.entries)} parameters have decoupled shares above 1" in out


def test_lambda_defaults_to_the_checkpoint_config(saved: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(saved), "--lr", "0.5"]) == 0
    lam = load_significance_checkpoint(saved).config.lambda_prior
    assert f"lr=0.5, lambda_prior={lam:g}, kappa=1" in capsys.readouterr().out


def test_omega_max_clips_the_shares(saved: Path, capsys: pytest.CaptureFixture) -> None:
    prior = load_significance_checkpoint(saved).prior
    top = max(float(e.significance_values().max()) for e in prior.entries.values())
    assert main(["inspect", str(saved), "--lr", "0.5", "--lambda-prior", "1", "--omega-max", str(top / 4)]) == 0
    out = capsys.readouterr().out
    assert f"omega clipped at {top / 4:g}" in out
    assert float(table(out)["all"][5]) == pytest.approx(0.5 * top / 4, rel=1e-3)  # the largest decoupled share


@pytest.mark.parametrize("argv, message", [
    (["--lr", "-1"], "--lr must be a finite non-negative number, got -1.0"),
    (["--lr", "nan"], "--lr must be a finite non-negative number, got nan"),
    (["--lambda-prior", "3"], "--lambda-prior needs --lr"),
    (["--omega-max", "3"], "--omega-max needs --lr"),
    (["--lr", "1", "--omega-max", "0"], "--omega-max must be a finite positive number, got 0.0"),
    (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
])
def test_bad_share_arguments_exit_2(saved: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(saved), *argv]) == 2
    assert message in capsys.readouterr().err
