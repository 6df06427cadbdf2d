"""SRFT under an unchanged transformers.Trainer with SRFTCallback."""

from __future__ import annotations

import contextlib
import copy
import inspect
import pickle
import shutil
import types

import pytest
import torch
from _integ_common import calibration_batches, examples, flat_params, make_hf_srft, tiny_hf_vit
from tolerances import adam_trajectory_tolerance, assert_close32, float32_rtol
from torch.optim.optimizer import register_optimizer_step_pre_hook

from srft_peft import SRFTModel
from srft_peft.integrations.transformers import SRFT_STATE_NAME, SRFTCallback

STEPS = 6


def _dataset(n: int = 8 * STEPS) -> list[dict]:
    batch = examples(0, range(n), salt=3)
    return [{"pixel_values": batch["pixel_values"][i], "labels": int(batch["labels"][i])} for i in range(n)]


def _args(tmp_path, batch: int = 8, accumulation: int = 1, **overrides):
    import transformers

    fields = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=batch,
                  per_device_eval_batch_size=8, gradient_accumulation_steps=accumulation, max_steps=STEPS,
                  learning_rate=1e-2, lr_scheduler_type="constant", save_strategy="no", logging_strategy="no",
                  disable_tqdm=True, seed=0, dataloader_num_workers=0)
    fields.update(overrides)
    return transformers.TrainingArguments(**fields)


def _trainer(model, args, callbacks=(), **kwargs):
    import transformers

    return transformers.Trainer(model=model, args=args, train_dataset=_dataset(), callbacks=list(callbacks), **kwargs)


@contextlib.contextmanager
def counting_steps():
    """The optimizers whose ``step()`` runs inside the block (torch's global step pre-hook)."""
    calls: list = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, *_: calls.append(optimizer))
    try:
        yield calls
    finally:
        handle.remove()


def test_trainer_sees_the_wrapped_models_signature(accelerate_state, tmp_path):
    from transformers.utils import can_return_loss, find_labels

    srft = make_hf_srft("loss")
    base_signature = inspect.signature(type(srft.base_model).forward)
    assert inspect.signature(type(srft).forward) == base_signature
    assert list(inspect.signature(srft.forward).parameters) == list(base_signature.parameters)[1:]
    assert find_labels(type(srft)) == ["labels"] and can_return_loss(type(srft)) == can_return_loss(
        type(srft.base_model))
    assert isinstance(srft, SRFTModel) and type(srft).__name__ == "SRFTModel[ViTForImageClassification]"
    trainer = _trainer(srft, _args(tmp_path), callbacks=[SRFTCallback(srft)])
    assert trainer.label_names == ["labels"]
    assert trainer.model_accepts_loss_kwargs is False  # apply="loss": the Trainer divides by the accumulation steps
    grad_srft = make_hf_srft("grad")
    assert _trainer(grad_srft, _args(tmp_path)).model_accepts_loss_kwargs is True  # as for the bare ViT
    for clone in (copy.deepcopy(srft), pickle.loads(pickle.dumps(srft))):
        assert type(clone) is type(srft)
        torch.testing.assert_close(flat_params(clone), flat_params(srft), rtol=0, atol=0)  # a copy: exact


def test_trainer_default_columns_train_and_evaluate(accelerate_state, tmp_path):
    srft = make_hf_srft("loss", total_steps=STEPS)
    trainer = _trainer(srft, _args(tmp_path, batch=4, accumulation=2), callbacks=[SRFTCallback(srft)],
                       eval_dataset=_dataset(16))
    with counting_steps() as calls:
        trainer.train()  # remove_unused_columns=True (default): pixel_values and labels must survive
    assert trainer.state.global_step == STEPS
    assert srft.step == len(calls) == STEPS  # once per optimizer step, not per micro-batch
    assert not srft.attached  # detached at on_train_end
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def float64_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])


def _train(tmp_path, apply: str | None, accumulation: int = 1, lambda_prior: float = 200.0, float64: bool = False):
    """apply=None: the plain model (no SRFT); ``float64``: the model moved to float64 after its prior."""
    if apply is None:
        model = tiny_hf_vit()
        trainer = _trainer(model, _args(tmp_path, batch=8 // accumulation, accumulation=accumulation))
        trainer.train()
        return model, None
    srft = make_hf_srft(apply, total_steps=STEPS, lambda_prior=lambda_prior)
    if float64:
        srft.double()
    trainer = _trainer(srft, _args(tmp_path, batch=8 // accumulation, accumulation=accumulation),
                       callbacks=[SRFTCallback(srft)])
    with counting_steps() as calls:
        trainer.train()
    assert srft.step == len(calls) == trainer.state.global_step == STEPS
    return srft, srft


@pytest.mark.parametrize("apply", ["grad", "loss"])
def test_trainer_accumulation_4x2_equals_batch_8(accelerate_state, tmp_path, apply):
    # float64 models: micro-batches sum the gradients in another order, and in float32 AdamW (g / sqrt(v)) would blow
    # the rounding of an element whose gradient is near zero up to lr (measured: 4e-3 relative on one element)
    big, _ = _train(tmp_path / "big", apply, float64=True)
    acc, _ = _train(tmp_path / "acc", apply, accumulation=4, float64=True)
    tol = adam_trajectory_tolerance(64, depth=8, steps=STEPS, lr=1e-2)  # SRFT's float32 prior gradient (U, V: 64)
    torch.testing.assert_close(float64_params(acc), float64_params(big), **tol)
    stronger, _ = _train(tmp_path / "x4", apply, lambda_prior=800.0, float64=True)  # a per-micro-batch penalty
    assert (float64_params(stronger) - float64_params(big)).abs().max() > 100 * tol["atol"]


@pytest.mark.parametrize("apply", ["grad", "loss"])
def test_trainer_regularized_run_stays_closer_to_theta0(accelerate_state, tmp_path, apply):
    reference = make_hf_srft(apply)  # the prior of the pretrained weights, to measure both runs with
    theta0 = flat_params(reference.base_model)
    plain, _ = _train(tmp_path / "plain", None)
    regularized, srft = _train(tmp_path / "srft", apply)
    plain_params = dict(plain.named_parameters())
    with torch.no_grad():
        for name, p in reference.base_model.named_parameters():
            p.copy_(plain_params[name])
        plain_penalty = float(reference.prior_penalty().detach())
    srft_penalty = float(srft.prior_penalty().detach())
    assert srft_penalty < 0.5 * plain_penalty
    regularized_names = set(srft.regularized_parameters)
    mask = torch.cat([torch.full((p.numel(),), n in regularized_names)
                      for n, p in plain.named_parameters()])
    plain_distance = (flat_params(plain) - theta0)[mask].norm()
    srft_distance = (flat_params(srft.base_model) - theta0)[mask].norm()
    assert 0 < srft_distance < plain_distance


def test_trainer_resume_restores_srft_state(accelerate_state, tmp_path):
    _, uninterrupted = _train(tmp_path / "full", "grad")
    expected = flat_params(uninterrupted)

    srft = make_hf_srft("grad", total_steps=STEPS)
    args = _args(tmp_path / "run", save_strategy="steps", save_steps=3)
    trainer = _trainer(srft, args, callbacks=[SRFTCallback(srft)])
    trainer.train()
    saved = torch.load(tmp_path / "run" / "checkpoint-3" / SRFT_STATE_NAME, weights_only=True)
    assert saved["engine"]["step"] == 3 and "prior" in saved

    fresh = make_hf_srft("grad", total_steps=STEPS, estimate=False)  # the prior comes from the checkpoint
    trainer = _trainer(fresh, args, callbacks=[SRFTCallback(fresh)])
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-3"))
    assert fresh.step == STEPS
    torch.testing.assert_close(flat_params(fresh), expected, rtol=0, atol=0)  # the same kernels replayed: exactly


def test_trainer_save_model_and_checkpoints_load_with_from_pretrained(accelerate_state, tmp_path):
    from transformers import ViTForImageClassification

    srft = make_hf_srft("loss", total_steps=STEPS)
    initial = {k: v.clone() for k, v in srft.state_dict().items()}
    trainer = _trainer(srft, _args(tmp_path / "out", save_strategy="steps", save_steps=STEPS),
                       callbacks=[SRFTCallback(srft)])
    trainer.train()
    trainer.save_model()  # what push_to_hub() uploads: args.output_dir
    tuned = srft.base_model.state_dict()
    for folder in (tmp_path / "out", tmp_path / "out" / f"checkpoint-{STEPS}"):
        loaded, info = ViTForImageClassification.from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (folder, info)
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in tuned.items()), folder
        assert any(not torch.equal(state[k], v) for k, v in initial.items()), folder


class _FakeHub:
    """Stands in for ``transformers.trainer.hf_api()``: ``upload_folder`` copies what would be uploaded."""

    def __init__(self, root):
        self.root = root

    def create_repo(self, repo_id, **kwargs):
        return types.SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        return shutil.copytree(folder_path, self.root / repo_id, ignore=shutil.ignore_patterns(*ignore_patterns))


def test_trainer_push_to_hub_uploads_a_loadable_model(accelerate_state, tmp_path, monkeypatch):
    import transformers.trainer
    from transformers import ViTForImageClassification

    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    srft = make_hf_srft("grad", total_steps=STEPS)
    trainer = _trainer(srft, _args(tmp_path / "out", hub_model_id="user/tiny-vit-srft"), callbacks=[SRFTCallback(srft)])
    trainer.train()
    trainer.push_to_hub()
    loaded = ViTForImageClassification.from_pretrained(tmp_path / "hub" / "user/tiny-vit-srft").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in srft.base_model.state_dict().items())


def test_callback_refuses_loss_mode_when_the_trainer_bypasses_the_wrapper(accelerate_state, tmp_path):
    srft = make_hf_srft("loss")
    trainer = _trainer(srft.base_model, _args(tmp_path), callbacks=[SRFTCallback(srft)])
    with pytest.raises(ValueError, match="apply='loss'"):
        trainer.train()


def test_callback_grad_mode_works_on_the_bare_model(accelerate_state, tmp_path):
    srft = make_hf_srft("grad", total_steps=STEPS)
    reference = make_hf_srft("grad")  # the prior at the pretrained weights, to measure both runs with
    trainer = _trainer(srft.base_model, _args(tmp_path / "srft"), callbacks=[SRFTCallback(srft)])
    trainer.train()
    assert srft.step == STEPS
    plain, _ = _train(tmp_path / "plain", None)
    with torch.no_grad():  # the significance-weighted distance from theta0 of the plain run
        for p, q in zip(reference.base_model.parameters(), plain.parameters()):
            p.copy_(q)
    assert float(srft.prior_penalty().detach()) < 0.5 * float(reference.prior_penalty().detach())


def test_calibration_batches_are_trainer_compatible():
    """The calibration batches are what the Trainer feeds (its default collator over their examples); the HF model
    returns .loss on them, so estimate_prior uses the model's own objective, and its statistics and prior are those of
    the direct path: an explicit cross-entropy loss_fn on the logits."""
    import torch.nn.functional as F
    from transformers import default_data_collator

    from srft_peft.significance.estimation import collect_statistics

    batches = calibration_batches()
    for batch in batches:
        collated = default_data_collator([{k: v[i] for k, v in batch.items()} for i in range(len(batch["labels"]))])
        assert collated.keys() == batch.keys() and all(torch.equal(collated[k], batch[k]) for k in batch)

    def cross_entropy(model, batch):
        return F.cross_entropy(model(pixel_values=batch["pixel_values"]).logits, batch["labels"])

    srft, direct = make_hf_srft(estimate=False), make_hf_srft(estimate=False)
    model = srft.base_model
    for batch in batches:  # the same loss; transformers may reduce it in another order (a sum over 4 examples)
        assert_close32(model(**batch).loss.detach(), cross_entropy(model, batch).detach(), reduction_size=4)
    stats = [collect_statistics(m.base_model, m.regularized_targets, batches, m.srft_config, loss_fn=fn, progress=False)
             for m, fn in ((srft, None), (direct, cross_entropy))]
    assert (stats[0].objective, stats[1].objective) == ("model_loss", "loss_fn")
    for name, (A, S) in stats[1].factors.items():
        # float32 factors over 4 batches x 4 examples x up to 5 tokens, through the 2-layer network and back
        assert_close32(stats[0].factors[name][0], A, reduction_size=80, depth=4)
        assert_close32(stats[0].factors[name][1], S, reduction_size=80, depth=4)
    for name, fisher in stats[1].fisher.items():
        assert_close32(stats[0].fisher[name], fisher, reduction_size=80, depth=4)
    prior, ref = srft.estimate_prior(batches, progress=False), direct.estimate_prior(batches, cross_entropy, progress=False)
    assert prior.objective == "model_loss" and prior.entries.keys() == ref.entries.keys()
    assert prior.normalizer == pytest.approx(ref.normalizer, rel=float32_rtol(80, depth=4))


def _assert_loads_the_fine_tune(folder, srft: SRFTModel) -> None:
    """``SRFTModel.from_pretrained(pretrained, folder)`` holds ``srft``'s fine-tuned weights, its prior anchored at the
    pretrained weights (the same penalty as ``srft``'s), and the folder loads as a plain ViT too."""
    from transformers import ViTForImageClassification

    pretrained = tiny_hf_vit()
    assert any(not torch.equal(v, srft.state_dict()[k]) for k, v in pretrained.state_dict().items())
    loaded = SRFTModel.from_pretrained(pretrained, folder)
    tuned, state = srft.state_dict(), loaded.state_dict()
    assert state.keys() == tuned.keys() and all(torch.equal(state[k], v) for k, v in tuned.items())
    saved_prior, prior = srft.prior.tensors(), loaded.prior.tensors()
    assert all(torch.equal(prior[k], v) for k, v in saved_prior.items())
    penalty = loaded.prior_penalty().detach()
    assert float(penalty) > 0 and torch.equal(penalty, srft.prior_penalty().detach())
    plain = ViTForImageClassification.from_pretrained(folder).state_dict()
    assert all(torch.equal(plain[k], v) for k, v in tuned.items())


def test_srft_trainer_save_model_anywhere_loads_with_from_pretrained(accelerate_state, tmp_path):
    from srft_peft.integrations.transformers import SRFTTrainer

    srft = make_hf_srft("grad", total_steps=STEPS)
    trainer = SRFTTrainer(model=srft, args=_args(tmp_path / "out"), train_dataset=_dataset())
    assert sum(isinstance(c, SRFTCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    assert srft.step == STEPS
    other = tmp_path / "somewhere" / "else"
    trainer.save_model(str(other))  # not args.output_dir
    _assert_loads_the_fine_tune(other, srft)


def test_srft_trainer_push_to_hub_uploads_what_save_model_writes(accelerate_state, tmp_path, monkeypatch):
    import transformers.trainer

    from srft_peft.integrations.transformers import SRFTTrainer

    hub = _FakeHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    srft = make_hf_srft("grad", total_steps=STEPS)
    trainer = SRFTTrainer(model=srft, args=_args(tmp_path / "out", hub_model_id="user/tiny-vit-srft"),
                          train_dataset=_dataset())
    trainer.train()
    trainer.push_to_hub()
    repo = tmp_path / "hub" / "user/tiny-vit-srft"
    _assert_loads_the_fine_tune(repo, srft)
    trainer.save_model(str(tmp_path / "local"))
    uploaded = {p.name for p in repo.iterdir()} - {"README.md", "training_args.bin"}
    assert uploaded == {p.name for p in (tmp_path / "local").iterdir()} - {"README.md", "training_args.bin"}
    for name in uploaded:  # the same files, byte for byte
        assert (repo / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    trainer.save_model()  # the Trainer's card (marked) is rewritten by the next save, without a warning
