"""Bad inputs everywhere: each raises a clear error naming the bad value, field or file, and changes nothing (weights,
prior, step, files on disk)."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from checkpoint_helpers import (
    Tiny,
    assert_unchanged,
    batches,
    files_of,
    lora_srft,
    make_srft,
    perturb_,
    rewrite_json,
    rewrite_tensors,
    snapshot,
    tiny,
)

import srft_peft.checkpoint as checkpoint_module
from srft_peft import SRFTConfig, SRFTModel, get_srft_model
from srft_peft.checkpoint import CONFIG_NAME, MODEL_CARD_NAME, significance_path
from srft_peft.cli import main
from srft_peft.integrations.accelerate import SRFTState
from srft_peft.significance import PriorSignificance
from srft_peft.targeting import select_targets
from srft_peft.tracking.train import build_parser, config_from_args

INF, NAN = float("inf"), float("nan")
#: Every float field of SRFTConfig (prior_energy and omega_max may also be None).
FLOAT_FIELDS = [f.name for f in dataclasses.fields(SRFTConfig) if f.type in ("float", "Union[float, None]")]


def copy_of(saved: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    shutil.copytree(saved, folder)
    return folder


def raises_naming(error: type[Exception], *needles: str) -> Any:
    """``pytest.raises(error)`` whose message must contain every one of ``needles`` (literally)."""
    return pytest.raises(error, match="(?s)" + "".join(f"(?=.*{re.escape(n)})" for n in needles))


# --- 10: non-finite values, in every float field and through every door -------------------------------------------
def test_every_float_field_is_covered() -> None:
    assert len(FLOAT_FIELDS) == 14 and {"damping", "lambda_prior", "prior_energy", "omega_max"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_infinite_float_fields_are_rejected(field: str) -> None:
    with raises_naming(ValueError, field, "inf"):
        SRFTConfig(**{field: INF})
    with raises_naming(ValueError, field, "inf"):  # the JSON door: json.loads("1e999") is inf
        SRFTConfig.from_dict({field: INF})


@pytest.mark.parametrize("override", [dict(lambda_prior=INF), dict(lambda_transfer=NAN), dict(kappa_end=-INF),
                                      dict(damping=INF), dict(lambda_prior="1.0")], ids=repr)
def test_from_pretrained_overrides_are_validated(saved: Path, override: dict) -> None:
    (key, value), = override.items()
    base = tiny()
    perturb_(base)
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    files = files_of(saved)
    with raises_naming(ValueError, key, repr(value)):
        SRFTModel.from_pretrained(base, saved, **override)
    assert all(torch.equal(v, weights[k]) for k, v in base.state_dict().items())
    assert not base._forward_hooks and files_of(saved) == files


@pytest.mark.parametrize("flag, field, shown", [("lambda_prior=1e999", "lambda_prior", "inf"),
                                                ("damping=1e999", "damping", "inf"),
                                                ("prior_energy=\"0.5\"", "prior_energy", "'0.5'")])
def test_tracking_cli_rejects_bad_srft_overrides(flag: str, field: str, shown: str) -> None:
    args = build_parser().parse_args(["--srft", flag])
    with raises_naming(ValueError, field, shown):
        config_from_args(args)


# --- 17: argument checks that name the value ------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needles", [
    (dict(prior_energy="0.5"), ("prior_energy", "'0.5'")),
    (dict(target_modules="blocks[0"), ("target_modules", "'blocks[0'", "regular expression")),
    (dict(exclude_modules="fc(1"), ("exclude_modules", "'fc(1'")),
], ids=repr)
def test_config_fields_name_the_bad_value(kwargs: dict, needles: tuple[str, ...], target: SRFTModel) -> None:
    before = snapshot(target)
    with raises_naming(ValueError, *needles):
        dataclasses.replace(target.srft_config, **kwargs)
    assert_unchanged(target, before)


def test_from_dict_needs_a_dict() -> None:
    with raises_naming(TypeError, "from_dict", "list", "['prior_rank', 8]"):
        SRFTConfig.from_dict(["prior_rank", 8])


def test_select_targets_names_an_invalid_regex() -> None:
    with raises_naming(ValueError, "target_modules", "'blocks[0'"):
        select_targets(tiny(), "blocks[0", None)


@pytest.mark.parametrize("kwargs, error, needles", [
    (dict(num_batches="2"), ValueError, ("num_batches", "'2'")),
    (dict(num_batches=-1), ValueError, ("num_batches", "-1")),
    (dict(num_batches=True), ValueError, ("num_batches", "True")),
    (dict(loss_fn="mse"), TypeError, ("loss_fn", "'mse'")),
    (dict(dataloader=None), TypeError, ("dataloader", "None")),
    (dict(dataloader="images/"), TypeError, ("dataloader", "'images/'")),
], ids=repr)
def test_estimate_prior_arguments(kwargs: dict, error: type[Exception], needles: tuple[str, ...],
                                  target: SRFTModel) -> None:
    before = snapshot(target)
    with raises_naming(error, *needles):
        target.estimate_prior(**{"dataloader": batches(), "progress": False, **kwargs})
    assert_unchanged(target, before)


@pytest.mark.parametrize("model", ["vit", None, 3])
def test_a_model_that_is_not_a_module(model: Any) -> None:
    with raises_naming(TypeError, "torch.nn.Module", repr(model)):
        get_srft_model(model, SRFTConfig())
    with raises_naming(TypeError, "torch.nn.Module", repr(model)):
        SRFTModel(model, SRFTConfig())


def test_a_meta_device_model_is_refused_before_wrapping() -> None:
    with torch.device("meta"):
        model = Tiny()
    with raises_naming(ValueError, "'pos'", "meta device"):
        get_srft_model(model, SRFTConfig(prior_rank=2))
    assert all(p.is_meta for p in model.parameters()) and not model._forward_hooks and not model._forward_pre_hooks


# --- 15: tampered checkpoints name the field and the file, change nothing, and make `inspect` exit 2 ----------------
TAMPERED_JSON = {
    "normalizer string": (lambda m: m.update(normalizer="abc"), "normalizer", "'abc'"),
    "normalizer null": (lambda m: m.update(normalizer=None), "normalizer", "None"),
    "normalizer negative": (lambda m: m.update(normalizer=-2.0), "normalizer", "-2.0"),
    "normalizer infinite": (lambda m: m.update(normalizer=INF), "normalizer", "inf"),
    "calibration string": (lambda m: m.update(calibration="x"), "calibration", "'x'"),
    "calibration count": (lambda m: m["calibration"].update(num_examples="16"), "calibration.num_examples", "'16'"),
    "calibration batches": (lambda m: m["calibration"].update(num_batches=-1), "calibration.num_batches", "-1"),
    "base_model string": (lambda m: m.update(base_model="vit"), "base_model", "'vit'"),
    "base_model name": (lambda m: m["base_model"].update(name=7), "base_model.name", "7"),
    "transfer has_v": (lambda m: m["transfer_state"].update(has_v="yes"), "transfer_state.has_v", "'yes'"),
    "lambda_prior infinite": (lambda m: m.update(lambda_prior=INF), "lambda_prior", "inf"),
    "damping infinite": (lambda m: m.update(damping=INF), "damping", "inf"),
    "prior_energy string": (lambda m: m.update(prior_energy="0.5"), "prior_energy", "'0.5'"),
}
TAMPERED_TENSORS = {
    "negative omega": (lambda t: t["fc1.weight.omega"].neg_(), "'fc1.weight.omega'", "non-negative"),
    "negative fisher": (lambda t: t["norm.weight.fisher"].sub_(10.0), "'norm.weight.fisher'", "non-negative"),
    "negative v": (lambda t: t["transfer.v.pos"].sub_(1.0), "'transfer.v.pos'", "non-negative"),
}
TAMPERED = {**{k: (rewrite_json(edit), CONFIG_NAME, a, b) for k, (edit, a, b) in TAMPERED_JSON.items()},
            **{k: (rewrite_tensors(edit), "significance-", a, b) for k, (edit, a, b) in TAMPERED_TENSORS.items()}}


@pytest.mark.parametrize("corrupt, file, field, shown", list(TAMPERED.values()), ids=list(TAMPERED))
def test_tampered_checkpoint(saved: Path, tmp_path: Path, target: SRFTModel, capsys: pytest.CaptureFixture,
                             corrupt, file: str, field: str, shown: str) -> None:
    folder = copy_of(saved, tmp_path)
    corrupt(folder)
    files = files_of(folder)
    before = snapshot(target)
    with raises_naming(ValueError, str(folder / file), field, shown):
        target.load_significance(folder)
    assert_unchanged(target, before)
    base = tiny()
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    with raises_naming(ValueError, file, field):
        SRFTModel.from_pretrained(base, folder)
    assert all(torch.equal(v, weights[k]) for k, v in base.state_dict().items())
    assert main(["inspect", str(folder)]) == 2  # no traceback: a one-line error on stderr
    err = capsys.readouterr().err
    assert err.startswith("srft-peft: error: ") and file in err and field in err and "Traceback" not in err
    assert files_of(folder) == files


# --- 14: resume states of another model: validated first, nothing changed --------------------------------------------
def engine_state_with(target: SRFTModel, edit) -> dict:
    state = SRFTState(target).state_dict()
    edit(state)
    return state


def other_width_state() -> dict:
    return SRFTState(make_srft("kfac", width=16, train_steps=1)).state_dict()


def drop(d: dict, key: str) -> None:
    del d[key]


RESUME = {
    "another model": (lambda t: other_width_state(), ("'pos'", "shape", "(16,)")),
    "unknown tensor": (lambda t: engine_state_with(t, lambda s: s["engine"]["tensors"].update(
        {"transfer.rank_codes.blocks.0.weight": torch.zeros(3, dtype=torch.int16)})),
        ("'transfer.rank_codes.blocks.0.weight'", "does not belong")),
    "v of other size": (lambda t: engine_state_with(t, lambda s: s["engine"]["tensors"].update(
        {"transfer.v": torch.ones(5)})), ("'transfer.v'", "(5,)")),
    "NaN v": (lambda t: engine_state_with(t, lambda s: s["engine"]["tensors"]["transfer.v"].fill_(NAN)),
              ("'transfer.v'", "finite")),
    "negative step": (lambda t: engine_state_with(t, lambda s: s["engine"].update(step=-1)), ("step", "-1")),
    "anchor of other shape": (lambda t: engine_state_with(t, lambda s: s["engine"]["tensors"].update(
        {"anchor.diag0.theta0": torch.zeros(3)})), ("'anchor.diag0.theta0'", "(3,)")),
    "missing anchor": (lambda t: engine_state_with(t, lambda s: drop(s["engine"]["tensors"], "anchor.group0.P0")),
                       ("'anchor.group0.P0'",)),
    "U that is a list": (lambda t: engine_state_with(t, lambda s: s["prior"]["entries"]["fc1.weight"].update(
        U=[[0.0]])), ("'fc1.weight.U'", "'fc1.weight'", "must be a tensor", "list")),
    "prior without entries": (lambda t: engine_state_with(t, lambda s: drop(s["prior"], "entries")),
                              ("'prior'", "'entries'", "missing")),
    "negative omega in prior": (lambda t: engine_state_with(
        t, lambda s: s["prior"]["entries"]["fc2.weight"]["omega"].neg_()), ("'fc2.weight.omega'", "non-negative")),
    "prior of a missing parameter": (lambda t: engine_state_with(t, lambda s: drop(s["prior"]["entries"], "pos")),
                                     ("'pos'", "no significance")),
    "prior normalizer": (lambda t: engine_state_with(t, lambda s: s["prior"].update(normalizer=NAN)),
                         ("normalizer", "nan")),
}


ENGINE_LEVEL = [RESUME[k][0] for k in ("unknown tensor", "v of other size", "NaN v", "negative step",
                                       "anchor of other shape", "missing anchor")]


@pytest.mark.parametrize("make_state, needles", list(RESUME.values()), ids=list(RESUME))
def test_resume_state_of_another_model(target: SRFTModel, make_state, needles: tuple[str, ...]) -> None:
    state = make_state(target)
    before = snapshot(target)
    with raises_naming(ValueError, *needles):
        SRFTState(target).load_state_dict(state)
    assert_unchanged(target, before)
    if make_state in ENGINE_LEVEL:  # the flaw is in the engine part: SRFTModel.load_srft_state_dict refuses it too
        with raises_naming(ValueError, *needles):
            target.load_srft_state_dict(state["engine"])
        assert_unchanged(target, before)


# --- 13: saving is atomic and never clobbers the user's files -------------------------------------------------------
def fail_mid_save(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(tensors: dict, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = make_srft("kfac"), make_srft("kfac", data_seed=5)
    folder = tmp_path / "ckpt"
    a.save_pretrained(folder)
    files = files_of(folder)
    fail_mid_save(monkeypatch)
    with raises_naming(OSError, str(folder), "No space left on device"):
        b.save_pretrained(folder)
    assert files_of(folder) == files and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    monkeypatch.undo()
    loaded = make_srft("kfac", data_seed=9)
    loaded.load_significance(folder)
    assert torch.equal(loaded.prior.entries["fc1.weight"].omega, a.prior.entries["fc1.weight"].omega)
    assert not torch.equal(loaded.prior.entries["fc1.weight"].omega, b.prior.entries["fc1.weight"].omega)


def test_a_folder_mixing_two_saves_is_refused(tmp_path: Path, target: SRFTModel) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_srft("kfac").save_pretrained(a)
    make_srft("kfac", data_seed=5).save_pretrained(b)
    shutil.copy(significance_path(b), significance_path(a))  # B's tensors under the name A's config reads
    files = files_of(a)
    before = snapshot(target)
    with raises_naming(ValueError, str(significance_path(a)), "sha256", "mixes two checkpoints"):
        target.load_significance(a)
    assert_unchanged(target, before)
    assert files_of(a) == files


def test_a_failed_save_into_a_new_folder_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fail_mid_save(monkeypatch)
    folder = tmp_path / "new" / "ckpt"
    with raises_naming(OSError, str(folder)):
        make_srft("kfac").save_pretrained(folder)
    assert not folder.exists() and list((tmp_path / "new").iterdir()) == []


def test_saving_into_a_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with raises_naming(NotADirectoryError, str(path)):
        make_srft("kfac").save_pretrained(path)
    assert path.read_text() == "mine"


def test_a_users_readme_is_kept_and_our_card_is_refreshed(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / MODEL_CARD_NAME).write_text("# My tracker\n")
    (folder / "notes.txt").write_text("keep me")
    with pytest.warns(UserWarning, match="README.md' was not written by srft-peft"):
        make_srft("kfac").save_pretrained(folder)
    assert (folder / MODEL_CARD_NAME).read_text() == "# My tracker\n" and (folder / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, significance_path(folder).name, MODEL_CARD_NAME,
                                                               "notes.txt"])
    other = tmp_path / "other"
    make_srft("kfac", data_seed=5).save_pretrained(other)
    first = (other / MODEL_CARD_NAME).read_text()
    make_srft("kfac", data_seed=6, train_steps=1).save_pretrained(other, include_transfer_state=True)
    second = (other / MODEL_CARD_NAME).read_text()
    assert "not included" in first and "included (step" in second  # our own card is rewritten


def test_lora_transfer_state_of_another_adapter_rank(tmp_path: Path) -> None:
    """Same base weights (same prior, same fingerprint), adapters of another rank: v does not fit and is refused."""
    lora_srft(rank=2, train_steps=1).save_pretrained(tmp_path, include_transfer_state=True)
    target = lora_srft(rank=4, train_steps=2)
    before = snapshot(target)
    with raises_naming(ValueError, str(significance_path(tmp_path)),
                       "'transfer.v.base_model.model.fc1.lora_A.default.weight'", "(2, 6)", "(4, 6)"):
        target.load_significance(tmp_path)
    assert_unchanged(target, before)


# --- PriorSignificance.from_state: every malformed field named, with its value ---------------------------------------
def _prior_state() -> dict:
    return make_srft("kfac").prior.to_state()


def _entry(state: dict, kind: str) -> dict:
    return next(e for e in state["entries"].values() if e["kind"] == kind)


FROM_STATE = {
    "not a dict": (lambda s: [s], TypeError, ("prior state", "list")),
    "missing normalizer": (lambda s: drop(s, "normalizer") or s, ValueError, ("'normalizer'", "missing")),
    "entries a list": (lambda s: {**s, "entries": []}, ValueError, ("'entries'", "list")),
    "negative normalizer": (lambda s: {**s, "normalizer": -2.0}, ValueError, ("'normalizer'", "-2.0")),
    "bool count": (lambda s: {**s, "num_examples": True}, ValueError, ("'num_examples'", "True")),
    "negative count": (lambda s: {**s, "num_batches": -1}, ValueError, ("'num_batches'", "-1")),
    "objective not text": (lambda s: {**s, "objective": 3}, ValueError, ("'objective'", "3")),
    "normalized not bool": (lambda s: {**s, "normalized": "yes"}, ValueError, ("'normalized'", "'yes'")),
    "unknown kind": (lambda s: _entry(s, "kfac").update(kind="lowrank") or s, ValueError, ("'fc1.weight'", "lowrank")),
    "kfac without V": (lambda s: drop(s["entries"]["fc1.weight"], "V") or s, ValueError, ("'fc1.weight'", "'V'")),
    "U a vector": (lambda s: s["entries"]["fc1.weight"].update(U=torch.ones(3)) or s, ValueError,
                   ("'fc1.weight.U'", "matrix", "(3,)")),
    "NaN omega": (lambda s: s["entries"]["fc1.weight"]["omega"].fill_(NAN) is None or s, ValueError,
                  ("'fc1.weight.omega'", "finite")),
    "omega of another rank": (lambda s: s["entries"]["fc1.weight"].update(omega=torch.ones(1, 1)) or s, ValueError,
                              ("'fc1.weight.omega'", "(1, 1)")),
    "energy above 1": (lambda s: s["entries"]["fc1.weight"].update(retained_energy=1.5) or s, ValueError,
                       ("'retained_energy'", "'fc1.weight'", "1.5")),
    "negative fisher": (lambda s: s["entries"]["pos"]["fisher"].sub_(5.0) is None or s, ValueError,
                        ("'pos.fisher'", "non-negative")),
    "unknown source": (lambda s: s["entries"]["pos"].update(source="guess") or s, ValueError, ("'source'", "'guess'")),
    "integer fisher": (lambda s: s["entries"]["pos"].update(fisher=torch.ones(8, dtype=torch.int64)) or s, ValueError,
                       ("'pos.fisher'", "torch.int64")),
}


@pytest.mark.parametrize("corrupt, error, needles", list(FROM_STATE.values()), ids=list(FROM_STATE))
def test_prior_from_state_names_the_bad_field(corrupt, error, needles: tuple[str, ...]) -> None:
    state = corrupt(_prior_state())
    with raises_naming(error, *needles):
        PriorSignificance.from_state(state)


def test_setting_a_bad_step_changes_nothing(target: SRFTModel) -> None:
    before = snapshot(target)
    for bad in (-1, 2.5, True, "3"):
        with raises_naming(ValueError, "step", repr(bad)):
            target.step = bad
    assert_unchanged(target, before)
    target.step = 7
    assert target.step == 7 and target.srft_state_dict()["step"] == 7
