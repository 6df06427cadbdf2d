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
* :class:`SRFTTrainer` (a ``Trainer`` subclass that adds the callback) makes ``save_model(any_dir)`` and
  ``push_to_hub()`` write the weights *and* the significance, so ``SRFTModel.from_pretrained(pretrained, dir)``
  loads the fine-tuned model with its prior, anchored at the pretrained weights.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from ..card import MODEL_CARD_MARKER, MODEL_CARD_NAME
from ..model import SRFTModel
from ..weights import save_model_config
from .accelerate import find_srft_model

__all__ = ["SRFT_STATE_NAME", "SRFTCallback", "SRFTTrainer", "save_model_config"]

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


class SRFTTrainer(Trainer):
    """``transformers.Trainer`` whose ``save_model(dir)`` and ``push_to_hub()`` write a folder that
    ``SRFTModel.from_pretrained(pretrained_model, dir)`` loads with the fine-tuned weights, as peft models do.

    The Trainer calls ``save_pretrained`` only on a ``PreTrainedModel`` or a ``PeftModel``; for any other model it
    writes the bare weights. This subclass saves through :meth:`SRFTModel.save_pretrained` with the weights
    (``model.safetensors`` + the base model's ``config.json``, so ``<ModelClass>.from_pretrained(dir)`` works too) and
    the significance, then the processing class and training arguments like the Trainer. An :class:`SRFTCallback` is
    added unless ``callbacks`` holds one.

    Example:
        >>> trainer = SRFTTrainer(model=srft, args=args, train_dataset=ds)  # doctest: +SKIP
        >>> trainer.train(); trainer.save_model("tuned")  # doctest: +SKIP
        >>> again = SRFTModel.from_pretrained(ViTForImageClassification.from_pretrained(base_id), "tuned")  # doctest: +SKIP
    """

    def __init__(self, model: Any = None, *args: Any, callbacks: Optional[list] = None, **kwargs: Any) -> None:
        callbacks = list(callbacks or [])
        if not any(isinstance(c, SRFTCallback) for c in callbacks):
            callbacks.append(SRFTCallback(model))
        super().__init__(model, *args, callbacks=callbacks, **kwargs)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        srft = find_srft_model(self.model)
        srft.save_pretrained(output_dir, state_dict=state_dict if state_dict is not None else srft.state_dict())
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The Trainer's card, marked as generated (so the next save may rewrite it) with how to load the folder."""
        super().create_model_card(*args, **kwargs)
        path = os.path.join(self.args.output_dir, MODEL_CARD_NAME)
        if self.is_world_process_zero() and os.path.isfile(path):
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"\n{MODEL_CARD_MARKER}\n\nFine-tuned with SRFT (srft-peft): load the weights and the prior "
                        "significance with `SRFTModel.from_pretrained(pretrained_model, \"<this repo>\")`.\n")


def _wraps(model: Any, srft: SRFTModel) -> bool:
    try:
        return find_srft_model(model) is srft
    except TypeError:
        return False
