import json

import pytest

from srft_peft import SRFTConfig
from srft_peft.schedule import coefficients, kappa


def test_defaults_and_json_round_trip(tmp_path):
    cfg = SRFTConfig(target_modules=["qkv", "fc1"], prior_rank=8, total_steps=100, kappa_shape="linear")
    path = tmp_path / "c.json"
    cfg.to_json_file(path)
    assert SRFTConfig.from_dict(json.loads(path.read_text())) == cfg


def test_every_field_has_help():
    assert all(SRFTConfig.field_help().values())


@pytest.mark.parametrize("field,value", [
    ("prior_rank", 0), ("prior_rank", 2.5), ("prior_energy", 1.5), ("prior_estimator", "full"),
    ("kappa_shape", "sine"), ("lambda_transfer", 1.5), ("lambda_prior", -1.0), ("transfer_beta", 1.0),
    ("damping_min", 0.9), ("rank_interval", 0), ("total_steps", 0), ("apply", "both"),
    ("target_modules", 3), ("rank_mapping", "sort"), ("spikiness_max", 0.0),
])
def test_bad_values_name_the_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        SRFTConfig(**{field: value})
    assert field in str(err.value) and repr(value) in str(err.value)


def test_unknown_keys_rejected_when_strict():
    with pytest.raises(ValueError, match="unknown SRFTConfig fields"):
        SRFTConfig.from_dict({"prior_rank": 4, "bogus": 1}, strict=True)
    assert SRFTConfig.from_dict({"prior_rank": 4, "bogus": 1}).prior_rank == 4


@pytest.mark.parametrize("shape,expected", [
    ("cosine", (1.0, 0.5, 0.0)),
    ("linear", (1.0, 0.5, 0.0)),
    ("exponential", (1.0, 0.0820849986, 0.0067379470)),
    ("constant", (1.0, 1.0, 1.0)),
    ("step", (1.0, 0.0, 0.0)),
])
def test_kappa_shapes_at_0_half_and_end(shape, expected):
    cfg = SRFTConfig(kappa_shape=shape, total_steps=200)
    got = tuple(kappa(cfg, t) for t in (0, 100, 200))
    assert got == pytest.approx(expected, abs=1e-9)


def test_kappa_start_end_and_coefficients():
    cfg = SRFTConfig(kappa_shape="linear", kappa_start=0.8, kappa_end=0.2, total_steps=10, lambda_prior=2.0,
                     lambda_transfer=0.5)
    assert kappa(cfg, 5) == pytest.approx(0.5)
    lam, gamma = coefficients(cfg, 10)
    assert lam == pytest.approx(0.4) and gamma == pytest.approx(0.4)
    assert kappa(cfg, 50) == pytest.approx(0.2)  # clamped past T


def test_schedule_needs_total_steps():
    with pytest.raises(ValueError, match="total_steps"):
        kappa(SRFTConfig(), 3)
    assert kappa(SRFTConfig(kappa_shape="constant"), 3) == 1.0
