"""Significance checkpoints on local folders: exact round trips, identical penalties on a fresh model, strict and atomic
loading of bad inputs."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
from checkpoint_helpers import (
    assert_unchanged,
    lora_srft,
    make_srft,
    perturb_,
    rewrite_json,
    rewrite_tensors,
    snapshot,
    tiny,
)
from engine_helpers import state_tensor
from safetensors.torch import load_file
from torch import nn

from srft_peft import SRFTConfig, SRFTModel, get_srft_model, load_significance_checkpoint
from srft_peft.checkpoint import (
    CONFIG_NAME,
    METADATA_KEYS,
    MODEL_CARD_NAME,
    SIGNIFICANCE_PATTERN,
    describe_base_model,
    significance_path,
)
from srft_peft.significance import DiagonalSignificance, KFACSignificance, PriorSignificance


def assert_prior_equal(a: PriorSignificance, b: PriorSignificance) -> None:
    assert list(a.entries) == list(b.entries)
    assert (a.normalizer, a.num_examples, a.num_batches, a.objective, a.normalized) == \
        (b.normalizer, b.num_examples, b.num_batches, b.objective, b.normalized)
    for name, ea in a.entries.items():
        eb = b.entries[name]
        assert type(ea) is type(eb)
        if isinstance(ea, KFACSignificance):
            assert ea.retained_energy == eb.retained_energy
        else:
            assert ea.source == eb.source
        for key, t in ea.tensors().items():
            assert torch.equal(t, eb.tensors()[key]), f"{name}.{key}"


def same_weights(srft: SRFTModel) -> nn.Module:
    """A fresh Tiny model of the same architecture holding ``srft``'s current weights."""
    fresh = tiny(seed=123)
    fresh.load_state_dict(srft.base_model.state_dict())
    return fresh


# --- round trips ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("estimator", ["kfac", "diagonal"])
@pytest.mark.parametrize("include_transfer_state", [False, True])
def test_round_trip_reproduces_the_state(tmp_path: Path, estimator: str, include_transfer_state: bool) -> None:
    src = make_srft(estimator, train_steps=3)
    src.save_pretrained(tmp_path, include_transfer_state=include_transfer_state)
    tensors_file = significance_path(tmp_path).name
    assert SIGNIFICANCE_PATTERN.fullmatch(tensors_file)
    assert sorted(os.listdir(tmp_path)) == sorted([CONFIG_NAME, tensors_file, MODEL_CARD_NAME])

    dst = SRFTModel.from_pretrained(same_weights(src), tmp_path)
    assert dst.srft_config == src.srft_config
    assert_prior_equal(dst.prior, src.prior)
    assert_prior_equal(load_significance_checkpoint(tmp_path).prior, src.prior)
    saved, loaded = src.srft_state_dict(), dst.srft_state_dict()
    if include_transfer_state:
        assert loaded["step"] == saved["step"] == 3
        assert torch.equal(loaded["tensors"]["transfer.v"], saved["tensors"]["transfer.v"])
    else:
        assert loaded["step"] == 0 and "transfer.v" not in loaded["tensors"]
    assert float(dst.prior_penalty().detach()) == 0.0  # anchored at the weights it was loaded on


def test_the_stored_tensors_and_json(tmp_path: Path) -> None:
    src = make_srft("kfac", train_steps=2)
    src.save_pretrained(tmp_path, include_transfer_state=True)
    tensors = load_file(significance_path(tmp_path))
    assert tensors.keys() == src.prior.tensors().keys() | {"transfer.step"} | {
        f"transfer.v.{n}" for n in src.regularized_parameters}
    assert int(tensors["transfer.step"]) == 2
    assert not any(k.endswith("theta0") or "anchor" in k for k in tensors)  # neither weights nor theta0

    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert set(meta) == set(SRFTConfig().to_dict()) | set(METADATA_KEYS)
    assert meta["calibration"] == {"num_examples": 16, "num_batches": 2, "objective": "output_norm"}
    assert meta["entries"]["fc1.weight"] == {"kind": "kfac", "shape": [8, 6], "rank": [3, 3],
                                             "retained_energy": src.prior.entries["fc1.weight"].retained_energy}
    assert meta["entries"]["pos"] == {"kind": "diagonal", "shape": [8], "source": "per_example"}
    assert meta["entries"]["norm.weight"]["source"] == "per_example"
    assert "head.weight" not in meta["entries"]
    assert meta["transfer_state"] == {"has_v": True, "statistics": "own"}
    assert meta["base_model"] == {"name": "Tiny", "revision": None, "class": "Tiny"}
    assert len(meta["fingerprint"]) == 64


def test_optimizer_statistics_store_only_the_step(tmp_path: Path) -> None:
    src = make_srft("kfac", train_steps=2, optimizer="adam")  # Adam's exp_avg_sq is v: nothing of our own to store
    src.save_pretrained(tmp_path, include_transfer_state=True)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["transfer_state"] == {"has_v": False,
                                                                                    "statistics": "optimizer"}
    dst = SRFTModel.from_pretrained(same_weights(src), tmp_path)
    assert dst.step == 2


@pytest.mark.parametrize("estimator", ["kfac", "diagonal"])
def test_fresh_model_gives_identical_penalty_and_gradients(tmp_path: Path, estimator: str) -> None:
    src = make_srft(estimator)
    src.save_pretrained(tmp_path)
    dst = SRFTModel.from_pretrained(tiny(), tmp_path)  # same seed: the same pretrained weights
    for srft in (src, dst):
        perturb_(srft.base_model)
    penalty = src.prior_penalty()
    assert float(penalty.detach()) > 0 and torch.equal(penalty, dst.prior_penalty())

    penalty.backward()
    dst.prior_penalty().backward()
    for (name, a), b in zip(src.base_model.named_parameters(), dst.base_model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name

    for srft in (src, dst):  # the fused gradient (apply="grad") through one optimizer step
        opt = torch.optim.SGD(srft.parameters(), lr=0.1)
        for p in srft.parameters():
            p.grad = torch.zeros_like(p)
        srft.attach(opt)
        opt.step()
    for (name, a), b in zip(src.base_model.named_parameters(), dst.base_model.parameters()):
        assert torch.equal(a, b), name


def test_timm_vit_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5)
    fresh = copy.deepcopy(vit)
    targets = ["patch_embed.proj", "pos_embed", "cls_token", "blocks.0.attn.proj", "blocks.0.norm1"]  # small eighs
    src = get_srft_model(vit, SRFTConfig(target_modules=targets, prior_rank=4, total_steps=10))
    src.estimate_prior([torch.randn(2, 3, 32, 32)], progress=False)
    src.save_pretrained(tmp_path)

    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["base_model"]["name"] == "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert meta["entries"]["patch_embed.proj.weight"]["shape"] == [192, 3, 8, 8]  # a Conv2d as a Linear
    assert meta["entries"]["patch_embed.proj.weight"]["kind"] == "kfac"
    assert "base_model: timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in (tmp_path / MODEL_CARD_NAME).read_text()

    dst = SRFTModel.from_pretrained(fresh, tmp_path)
    for srft in (src, dst):
        perturb_(srft.base_model, scale=0.01)
    assert torch.equal(src.prior_penalty(), dst.prior_penalty())


def test_model_card(tmp_path: Path) -> None:
    make_srft().save_pretrained(tmp_path)
    card = (tmp_path / MODEL_CARD_NAME).read_text()
    front = card.split("---\n")[1]
    assert "library_name: srft-peft" in front
    assert all(f"- {tag}\n" in front for tag in ("srft", "significance", "tracking"))
    assert "16 examples in 2 batches" in card and "SRFTModel.from_pretrained(" in card


def test_base_model_names() -> None:
    hf = nn.Linear(1, 1)
    hf.config = SimpleNamespace(name_or_path="org/tracker", _commit_hash="abc123")  # transformers' public property
    assert describe_base_model(hf) == {"name": "org/tracker", "revision": "abc123", "class": "Linear"}
    assert describe_base_model(nn.Linear(1, 1))["name"] == "Linear"


def test_from_pretrained_overrides(tmp_path: Path) -> None:
    make_srft().save_pretrained(tmp_path)
    srft = SRFTModel.from_pretrained(tiny(), tmp_path, lambda_prior=0.5, total_steps=100)
    assert (srft.srft_config.lambda_prior, srft.srft_config.total_steps) == (0.5, 100)
    with pytest.raises(ValueError, match="lambda_transfer"):
        SRFTModel.from_pretrained(tiny(), tmp_path, lambda_transfer=2.0)
    with pytest.raises(ValueError, match="prior_rank .*cannot be overridden"):
        SRFTModel.from_pretrained(tiny(), tmp_path, prior_rank=8)
    with pytest.raises(ValueError, match="unknown SRFTConfig field 'nope'"):
        SRFTModel.from_pretrained(tiny(), tmp_path, nope=1)
    with pytest.raises(ValueError, match="already an SRFTModel"):
        SRFTModel.from_pretrained(srft, tmp_path)


def test_saving_needs_a_prior(tmp_path: Path) -> None:
    srft = get_srft_model(tiny(), SRFTConfig(total_steps=10))
    with pytest.raises(RuntimeError, match="no prior significance"):
        srft.save_pretrained(tmp_path)


# --- bad inputs: a clear error, and nothing changed -----------------------------------------------------------------
def truncate(folder: Path) -> None:
    data = significance_path(folder).read_bytes()
    significance_path(folder).write_bytes(data[: len(data) // 2])


class Exploit:
    """Unpickling this creates a folder: the proof that nothing was unpickled is that the folder does not exist."""

    marker = ""

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def pickle_instead(folder: Path) -> None:
    significance_path(folder).unlink()
    Exploit.marker = str(folder / "unpickled")
    (folder / "significance.bin").write_bytes(pickle.dumps(Exploit()))


BAD_INPUTS = {
    "missing config": (lambda d: (d / CONFIG_NAME).unlink(), FileNotFoundError, r"srft_config\.json' not found"),
    "missing safetensors": (lambda d: significance_path(d).unlink(), FileNotFoundError,
                            r"significance-[0-9a-f]{16}\.safetensors' not found"),
    "truncated safetensors": (truncate, ValueError,
                              r"significance-[0-9a-f]{16}\.safetensors: not a readable safetensors file"),
    "wrong shape": (rewrite_tensors(lambda t: t.update({"fc1.weight.U": torch.zeros(8, 2)})), ValueError,
                    r"tensor 'fc1\.weight\.U' of parameter 'fc1\.weight' has shape \(8, 2\), expected \(8, 3\)"),
    "missing tensor": (rewrite_tensors(lambda t: t.pop("fc2.weight.omega")), ValueError,
                       r"missing tensor 'fc2\.weight\.omega' of parameter 'fc2\.weight'"),
    "missing transfer v": (rewrite_tensors(lambda t: t.pop("transfer.v.pos")), ValueError,
                           r"missing tensor 'transfer\.v\.pos' of parameter 'pos'"),
    "extra tensor": (rewrite_tensors(lambda t: t.update({"fc3.weight.U": torch.zeros(2, 2)})), ValueError,
                     r"unexpected tensor 'fc3\.weight\.U'"),
    "non-finite tensor": (rewrite_tensors(lambda t: t["norm.weight.fisher"].fill_(float("nan"))), ValueError,
                          r"'norm\.weight\.fisher' of parameter 'norm\.weight' must be finite"),
    "pickle": (pickle_instead, ValueError, r"\['significance\.bin'\].*pickle files are not loaded because unpickling "
                                           r"can execute arbitrary code"),
    "malformed JSON": (lambda d: (d / CONFIG_NAME).write_text('{"format_version": 1,'), ValueError,
                       r"srft_config\.json: malformed JSON"),
    "value out of range": (rewrite_json(lambda m: m.update(transfer_beta=1.5)), ValueError,
                           r"srft_config\.json: transfer_beta must be in \[0\.0, 1\.0\), got 1\.5"),
    "missing format_version": (rewrite_json(lambda m: m.pop("format_version")), ValueError,
                               r"srft_config\.json: required key 'format_version' is missing"),
    "missing prior_estimator": (rewrite_json(lambda m: m.pop("prior_estimator")), ValueError,
                                r"required key 'prior_estimator' is missing"),
    "missing fingerprint": (rewrite_json(lambda m: m.pop("fingerprint")), ValueError,
                            r"required key 'fingerprint' is missing"),
    "newer format": (rewrite_json(lambda m: m.update(format_version=99)), ValueError, r"format 99 is newer"),
    "edited entries": (rewrite_json(lambda m: m["entries"]["pos"].update(shape=[9])), ValueError,
                       r"fingerprint does not match the entries"),
    "malformed entry": (rewrite_json(lambda m: m["entries"]["pos"].update(source="guess")), ValueError,
                        r"entry of parameter 'pos' needs a source in .*'uniform'"),
}


@pytest.mark.parametrize("corrupt, error, message", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input_raises_and_changes_nothing(tmp_path: Path, saved: Path, target: SRFTModel, corrupt, error,
                                              message) -> None:
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    corrupt(tmp_path)
    before = snapshot(target)
    with pytest.raises(error, match=message):
        target.load_significance(tmp_path)
    assert_unchanged(target, before)
    assert not (tmp_path / "unpickled").exists()


def test_wrong_architecture_names_the_first_parameter(tmp_path: Path, target: SRFTModel) -> None:
    make_srft("kfac", width=16).save_pretrained(tmp_path)
    before = snapshot(target)
    with pytest.raises(ValueError, match=r"does not match this model \(fingerprint .*parameter 'pos' has shape \(8,\) "
                                         r"here and \(16,\) in the checkpoint"):
        target.load_significance(tmp_path)
    assert_unchanged(target, before)

    base = tiny()
    weights = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(ValueError, match="parameter 'pos' has shape"):
        SRFTModel.from_pretrained(base, tmp_path)
    assert all(torch.equal(v, weights[k]) for k, v in base.state_dict().items())


def test_other_targets_or_estimator_are_refused(tmp_path: Path, target: SRFTModel) -> None:
    make_srft("kfac").save_pretrained(tmp_path)
    fewer = get_srft_model(tiny(), SRFTConfig(target_modules=["fc1", "fc2", "norm"], total_steps=10))
    with pytest.raises(ValueError, match="parameter 'pos' of the checkpoint is not regularized by this model"):
        fewer.load_significance(tmp_path)
    assert fewer.prior is None
    diagonal = make_srft("diagonal")
    perturb_(diagonal.base_model)
    before = snapshot(diagonal)
    with pytest.raises(ValueError, match="parameter 'fc1.weight' is 'diagonal' here and 'kfac' in the checkpoint"):
        diagonal.load_significance(tmp_path)
    assert_unchanged(diagonal, before)


def test_unknown_keys_warn_and_load(tmp_path: Path) -> None:
    src = make_srft("kfac")
    src.save_pretrained(tmp_path)
    rewrite_json(lambda m: m.update(future_option=True, hessian_mode="exact"))(tmp_path)
    target = make_srft("kfac", data_seed=5)
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['future_option', 'hessian_mode'\]"):
        prior = target.load_significance(tmp_path)
    assert target.prior is prior
    assert_prior_equal(prior, src.prior)


# --- peft LoRA: the prior is keyed by the base weights, v by the adapter factors --------------------------------------


def test_lora_significance_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from srft_peft.cli import main

    src = lora_srft(train_steps=2)
    assert {t.kind for t in src.regularized_targets} == {"lora_A", "lora_B"}
    src.save_pretrained(tmp_path, include_transfer_state=True)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert sorted(meta["entries"]) == ["base_model.model.fc1.base_layer.weight", "base_model.model.fc2.base_layer.weight"]

    loaded = lora_srft(seed=4)  # another prior, no transfer state
    prior = loaded.load_significance(tmp_path)
    assert_prior_equal(prior, src.prior)
    assert loaded.step == src.step == 2 and torch.equal(state_tensor(loaded, "transfer.v"), state_tensor(src, "transfer.v"))

    fresh = lora_srft(seed=4).base_model  # the same LoRA architecture, weights as they are
    again = SRFTModel.from_pretrained(fresh, tmp_path, lambda_prior=0.5)
    assert_prior_equal(again.prior, src.prior)
    assert again.srft_config.lambda_prior == 0.5 and again.step == 2

    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "base_model.model.fc1.base_layer.weight" in out and "step 2, v for every parameter" in out


# --- PriorSignificance.to_state / from_state: the one serialization of a prior ---------------------------------------
def test_prior_state_round_trips_through_a_weights_only_load() -> None:
    import io

    prior = make_srft("kfac").prior
    assert {type(e) for e in prior.entries.values()} == {KFACSignificance, DiagonalSignificance}
    buffer = io.BytesIO()
    torch.save(prior.to_state(), buffer)
    buffer.seek(0)
    again = PriorSignificance.from_state(torch.load(buffer, weights_only=True))
    assert_prior_equal(again, prior)


def test_training_state_moves_prior_anchors_and_step_to_a_fresh_model() -> None:
    src = make_srft("kfac", train_steps=2, transfer_statistics="own")
    dst = get_srft_model(copy.deepcopy(src.base_model), src.srft_config)  # the same weights, no prior yet
    dst.load_training_state(src.training_state())
    assert_prior_equal(dst.prior, src.prior)
    assert dst.step == src.step == 2
    a, b = dst.srft_state_dict(), src.srft_state_dict()
    assert a["tensors"].keys() == b["tensors"].keys() and "transfer.v" in a["tensors"]
    assert all(torch.equal(a["tensors"][k], b["tensors"][k]) for k in a["tensors"])
    torch.testing.assert_close(dst.prior_penalty(), src.prior_penalty())


def test_a_uniform_l2sp_prior_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    """save_pretrained writes an L2-SP (source 'uniform') prior; loading it back must accept what was written."""
    src = make_srft("diagonal")
    src.set_prior(PriorSignificance({t.name: DiagonalSignificance(t.name, torch.ones_like(t.param), source="uniform")
                                     for t in src.regularized_targets}, normalizer=1.0, normalized=True))
    src.save_pretrained(tmp_path)
    assert_prior_equal(load_significance_checkpoint(tmp_path).prior, src.prior)
    assert_prior_equal(SRFTModel.from_pretrained(same_weights(src), tmp_path).prior, src.prior)


def test_a_uniform_l2sp_prior_round_trips_through_its_state() -> None:
    """The tracking toolkit's L2-SP baseline uses a diagonal prior of source 'uniform'; its training state must load."""
    prior = PriorSignificance({"b": DiagonalSignificance("b", torch.ones(3), source="uniform")}, normalized=True)
    assert_prior_equal(PriorSignificance.from_state(prior.to_state()), prior)



# --- with the fine-tuned weights (save_pretrained(state_dict=...), SRFTTrainer.save_model) -------------------------
def test_weights_saved_with_the_significance_load_after_anchoring(tmp_path: Path) -> None:
    src = make_srft("kfac", train_steps=3)
    src.save_pretrained(tmp_path, state_dict=src.state_dict(), safe_serialization=True)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["weights_file"] == "model.safetensors"
    assert "`model.safetensors`: the fine-tuned model weights" in (tmp_path / MODEL_CARD_NAME).read_text()
    pretrained = tiny()  # make_srft's seed: the weights src started from
    dst = SRFTModel.from_pretrained(pretrained, tmp_path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    penalty = dst.prior_penalty().detach()  # anchored at the pretrained weights, not at the loaded ones
    assert float(penalty) > 0 and torch.equal(penalty, src.prior_penalty().detach())
    assert SRFTModel.from_pretrained(tiny(), tmp_path, lambda_prior=0.5).srft_config.lambda_prior == 0.5


def test_weights_of_another_model_are_refused_before_anything_is_set(tmp_path: Path) -> None:
    src = make_srft("kfac", train_steps=1)
    src.save_pretrained(tmp_path, state_dict={**src.state_dict(), "extra.weight": torch.zeros(2)})
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.safetensors: weight 'extra\.weight' is not a parameter or buffer"):
        SRFTModel.from_pretrained(model, tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
