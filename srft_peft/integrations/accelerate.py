"""SRFT under 🤗 accelerate: multi-process (DDP), gradient accumulation, mixed precision and exact resumption.

Usage (a complete loop is in ``docs/training.md``)::

    srft = get_srft_model(model, config)
    model, optimizer, loader, scheduler = accelerator.prepare(srft, optimizer, loader, scheduler)
    srft.estimate_prior(calibration_loader)          # each process its shard; the sums are reduced once
    prepare_srft(accelerator, srft, optimizer, total_steps=T)   # or srft.attach(optimizer, T, accelerator=accelerator)
    accelerator.load_state(path)                     # optional: resume (SRFT state included)

What makes it right:

* The hooks sit on the torch optimizer inside ``AcceleratedOptimizer``. accelerate calls that optimizer's ``step()``
  only when ``sync_gradients`` is true (the last micro-batch of an accumulation cycle), after the DDP all-reduce and,
  with fp16, inside ``GradScaler.step``, i.e. after ``unscale_``; a step the scaler skips never reaches it (fused
  optimizers, which it does reach, are handled by the engine). So the prior gradient, the statistics and the transfer
  damping happen once per real optimizer step, on unscaled synchronized gradients.
* SRFT's state lives in plain attributes, not in module buffers, so DDP never broadcasts it. :func:`prepare_srft`
  makes it identical on every process once (rank 0's prior, anchors and statistics are broadcast); from then on every
  process applies the same update to the same synchronized gradients.
* :class:`SRFTState` (registered by :func:`prepare_srft`) puts the prior significance, the anchors, the transfer
  statistics and the step (:meth:`SRFTModel.training_state`) into ``accelerator.save_state`` and restores them in
  ``load_state``. It holds only tensors, numbers, strings and dicts, so it also loads with
  ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn

from ..model import SRFTModel, SRFTState

__all__ = ["SRFTState", "find_srft_model", "prepare_srft"]


def find_srft_model(model: Any, accelerator: Any = None) -> SRFTModel:
    """The `SRFTModel` in ``model``: itself, or inside DDP / ``torch.compile`` / accelerate's wrappers."""
    seen = set()
    while not isinstance(model, SRFTModel) and id(model) not in seen:
        seen.add(id(model))
        if accelerator is not None:
            unwrapped = accelerator.unwrap_model(model)
            if unwrapped is not model:
                model = unwrapped
                continue
        for attr in ("module", "_orig_mod"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
    if not isinstance(model, SRFTModel):
        raise TypeError(f"expected an SRFTModel (from get_srft_model) or a wrapper of one, got {type(model).__name__}")
    return model


def prepare_srft(accelerator: Any, srft: Any, optimizer: Any, total_steps: Optional[int] = None, *,
                 checkpoint: bool = True) -> SRFTModel:
    """Attach SRFT to an accelerate training run; call it after ``accelerator.prepare``.

    ``srft`` is the `SRFTModel` or what ``prepare`` returned for it (DDP and compile wrappers are looked through);
    ``optimizer`` the (prepared) optimizer; ``total_steps`` the number of *optimizer* steps, i.e. with accumulation
    ``ceil(len(prepared_loader) / gradient_accumulation_steps) * epochs``. It

    1. makes the SRFT state (prior, anchors, statistics, step) identical on every process and puts it on the model's
       device (:meth:`SRFTModel.sync_srft_state`);
    2. hooks the torch optimizer inside the ``AcceleratedOptimizer`` (:meth:`SRFTModel.attach`);
    3. registers :class:`SRFTState` with ``accelerator.register_for_checkpointing`` (once per model and accelerator;
       ``checkpoint=False`` to skip), so ``save_state``/``load_state`` include it. Call ``load_state`` after this.

    Returns the `SRFTModel`.
    """
    model = find_srft_model(srft, accelerator)
    model.attach(optimizer, total_steps, accelerator=accelerator, checkpoint=checkpoint)
    return model
