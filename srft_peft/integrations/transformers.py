"""SRFT with an unchanged ``transformers.Trainer``: pass the `SRFTModel` as the model and add :class:`SRFTCallback`.

::

    srft = get_srft_model(hf_model, SRFTConfig(...))
    srft.estimate_prior(calibration_batches)
    trainer = Trainer(model=srft, args=args, train_dataset=ds, callbacks=[SRFTCallback(srft)])
    trainer.train()

How the pieces fit:

* ``Trainer`` inspects the model's ``forward`` signature (which batch columns to keep, the label names, whether it can
  return a loss, whether to pass ``num_items_in_batch``). An `SRFTModel` shows the wrapped model's signature (see
  ``srft_peft.forwarding``), so datasets, collators, evaluation and metrics work as without SRFT.
* ``apply="loss"``: the wrapper adds lambda_p(t) R_prior to ``outputs.loss`` in every training forward. It reports
  ``accepts_loss_kwargs = False``, so the Trainer divides each micro-batch's loss by the accumulation steps and the
  penalty counts once per optimizer step (with ``num_items_in_batch`` the Trainer would not divide and the penalty
  would count once per micro-batch).
* :class:`SRFTCallback` attaches the engine to the Trainer's optimizer at ``on_train_begin`` with
  T = ``state.max_steps``. The optimizer hooks then run inside the Trainer's single ``optimizer.step()`` per
  accumulation cycle: after the DDP all-reduce, the fp16 ``unscale_`` and the gradient clipping (so with
  ``apply="grad"`` the prior gradient is not clipped; with ``apply="loss"`` it is part of the clipped gradient).
* ``on_save`` writes the SRFT state (prior, anchors, statistics, step) to ``srft_state.pt`` in the checkpoint folder;
  ``train(resume_from_checkpoint=...)`` restores it at ``on_train_begin``.
* The fine-tuned model is the output. ``SRFTModel.state_dict()`` is the wrapped model's own, so the ``model.safetensors``
  that the Trainer writes (checkpoints, ``save_model``) has the base model's keys; the Trainer writes no config for a
  model that is not a ``PreTrainedModel``, so ``on_save`` adds the base model's ``config.json`` to every checkpoint and
  ``on_train_end`` saves the whole base model (``save_pretrained``) to ``output_dir``, where ``save_model()`` and
  ``push_to_hub()`` write by default: ``<ModelClass>.from_pretrained(folder)`` loads the fine-tuned weights.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch
from transformers import TrainerCallback

from ..model import SRFTModel
from .accelerate import find_srft_model

__all__ = ["SRFT_STATE_NAME", "SRFTCallback", "save_model_config"]

#: File name of the SRFT training state inside a Trainer checkpoint folder.
SRFT_STATE_NAME = "srft_state.pt"


class SRFTCallback(TrainerCallback):
    """Runs SRFT inside ``transformers.Trainer``.

    Args:
        srft: the `SRFTModel` (the Trainer's ``model``; with ``apply="grad"`` it may also wrap the model the Trainer
            trains, since the work happens in optimizer hooks).
        total_steps: T for the schedule; default ``state.max_steps`` of the run.
        resume_from: a checkpoint folder holding ``srft_state.pt`` to resume from; by default, when the Trainer
            resumes (``state.global_step > 0``), ``args.resume_from_checkpoint`` and then
            ``<output_dir>/checkpoint-<global_step>`` are tried.
    """

    def __init__(self, srft: Any, total_steps: Optional[int] = None, resume_from: Optional[str] = None) -> None:
        self.srft: SRFTModel = find_srft_model(srft)
        self.total_steps = total_steps
        self.resume_from = resume_from

    # --- events -------------------------------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        srft = self.srft
        if optimizer is None:
            raise RuntimeError("SRFTCallback: the Trainer has no optimizer at on_train_begin")
        if srft.srft_config.apply == "loss" and model is not None and not _wraps(model, srft):
            raise ValueError("SRFTCallback: apply='loss' adds the penalty in SRFTModel.forward, but the Trainer trains "
                             f"{type(model).__name__}; pass the SRFTModel as Trainer(model=srft, ...) or use "
                             "apply='grad'")
        srft.sync_srft_state()
        srft.attach(optimizer, self.total_steps or state.max_steps)
        if state.global_step > 0:
            self._resume(args, state)

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
        """Add the balance monitor's values of the last optimizer step (``srft/task_update``, ``srft/prior``,
        ``srft/damping``, ``srft/drift``) to the Trainer's logs while the monitor is on (``srft.monitor()`` or
        ``SRFTConfig.monitor_balance``), and to ``state.log_history``; nothing otherwise. Trainer registers its
        ``report_to`` callbacks (TensorBoard, ...) before the user's, so for them to receive the values put this
        callback first: ``trainer.callback_handler.callbacks.insert(0, trainer.pop_callback(SRFTCallback))``."""
        values = {f"srft/{k}": v for k, v in self.srft.balance().items()}
        if logs is not None and values:
            logs.update(values)  # seen by the callbacks after this one (Trainer puts its report_to ones first)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(values)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(self.srft.training_state(), os.path.join(folder, SRFT_STATE_NAME))
            save_model_config(self.srft.get_base_model(), folder)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.srft.detach()
        base = self.srft.get_base_model()
        if state.is_world_process_zero and callable(getattr(base, "save_pretrained", None)):
            base.save_pretrained(args.output_dir)

    # --- resumption ---------------------------------------------------------------------------------------------------
    def _resume(self, args: Any, state: Any) -> None:
        candidates = [self.resume_from, getattr(args, "resume_from_checkpoint", None),
                      os.path.join(args.output_dir, f"checkpoint-{state.global_step}")]
        for folder in candidates:
            if isinstance(folder, str) and os.path.isfile(os.path.join(folder, SRFT_STATE_NAME)):
                saved = torch.load(os.path.join(folder, SRFT_STATE_NAME), map_location="cpu", weights_only=True)
                self.srft.load_training_state(saved)
                return
        warnings.warn(f"SRFT: resuming at global step {state.global_step} without {SRFT_STATE_NAME} (looked in "
                      f"{[c for c in candidates if isinstance(c, str)]}); the schedule continues from that step but the "
                      "transfer statistics restart and the anchors are the current prior's", stacklevel=2)
        self.srft.step = state.global_step


def save_model_config(model: Any, folder: str) -> None:
    """Write ``model``'s ``config.json`` (and ``generation_config.json`` when it generates) into ``folder``, so that a
    ``model.safetensors`` there loads with ``from_pretrained``; nothing for a model without a Hugging Face config."""
    config = getattr(model, "config", None)
    if callable(getattr(config, "save_pretrained", None)):
        config.save_pretrained(folder)
    can_generate = getattr(model, "can_generate", None)
    generation = getattr(model, "generation_config", None)
    if callable(can_generate) and can_generate() and generation is not None:
        generation.save_pretrained(folder)


def _wraps(model: Any, srft: SRFTModel) -> bool:
    try:
        return find_srft_model(model) is srft
    except TypeError:
        return False
