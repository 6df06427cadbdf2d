"""kappa_horizon: kappa reaches kappa_end after a fraction of the run; transfer_share measures what that changes."""

from __future__ import annotations

import math

import pytest

from srft_peft import SRFTConfig
from srft_peft.schedule import kappa, transfer_share


@pytest.mark.parametrize("shape, expected", [
    ("linear", [1.0, 0.5, 0.0, 0.0, 0.0]),
    ("cosine", [1.0, 0.5, 0.0, 0.0, 0.0]),
    ("step", [1.0, 0.0, 0.0, 0.0, 0.0]),  # kappa_step_at = 0.5 of the horizon: step 25
    ("constant", [1.0] * 5),
])
def test_kappa_horizon_values_at_steps(shape, expected):
    cfg = SRFTConfig(total_steps=100, kappa_horizon=0.5, kappa_shape=shape)
    assert [kappa(cfg, s) for s in (0, 25, 50, 75, 100)] == pytest.approx(expected, abs=1e-12)


def test_kappa_horizon_one_is_the_whole_run_and_the_default():
    assert SRFTConfig().kappa_horizon == 1.0
    whole, default = SRFTConfig(total_steps=80, kappa_horizon=1.0), SRFTConfig(total_steps=80)
    assert [kappa(whole, s) for s in range(81)] == [kappa(default, s) for s in range(81)]
    assert kappa(default, 40) == pytest.approx(0.5) and kappa(default, 80) == 0.0


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5, math.inf, math.nan, "0.5", True])
def test_bad_kappa_horizon_is_refused_naming_field_and_value(value):
    with pytest.raises(ValueError, match=r"kappa_horizon must be .*got " + repr(value).replace("(", r"\(")):
        SRFTConfig(kappa_horizon=value)


def test_transfer_share_of_cosine_lr_and_kappa():
    """The issue's figure: kappa with the lr's cosine shape puts 1/4 of the lr-weighted update under the transfer
    term; a horizon of 0.5 more than doubles it."""
    steps = 1000
    lr = [0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)]
    tied = transfer_share(SRFTConfig(total_steps=steps), lr)
    half = transfer_share(SRFTConfig(total_steps=steps, kappa_horizon=0.5), lr)
    assert tied == pytest.approx(0.25, abs=2e-3) and half == pytest.approx(0.537, abs=2e-3)
    assert transfer_share(SRFTConfig(total_steps=steps, lambda_transfer=0.0), lr) == 0.0
    with pytest.raises(ValueError, match="lr_factors must have a positive sum, got 0.0"):
        transfer_share(SRFTConfig(total_steps=4), [0.0] * 4)
