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
  statistics and the step into ``accelerator.save_state`` and restores them in ``load_state``. It holds only tensors,
  numbers, strings and dicts, so it also loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import check_training_state
from ..model import SRFTModel
from ..significance.prior import DiagonalSignificance, KFACSignificance, PriorSignificance

__all__ = ["SRFTState", "find_srft_model", "prepare_srft", "prior_from_state", "prior_to_state", "sync_srft_state"]


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


# --- the state as plain tensors -------------------------------------------------------------------------------------
def prior_to_state(prior: PriorSignificance) -> dict[str, Any]:
    """``prior`` as a dict of tensors, numbers and strings (``torch.load(weights_only=True)`` can read it)."""
    entries: dict[str, dict[str, Any]] = {}
    for name, e in prior.entries.items():
        if isinstance(e, KFACSignificance):
            entries[name] = {"kind": "kfac", "U": e.U, "V": e.V, "omega": e.omega,
                             "retained_energy": float(e.retained_energy)}
        else:
            entries[name] = {"kind": "diagonal", "fisher": e.fisher, "source": e.source}
    return {"entries": entries, "normalizer": float(prior.normalizer), "num_examples": int(prior.num_examples),
            "num_batches": int(prior.num_batches), "objective": prior.objective, "normalized": bool(prior.normalized)}


def prior_from_state(state: dict[str, Any]) -> PriorSignificance:
    """The inverse of :func:`prior_to_state`; a malformed state raises ``ValueError`` naming what is wrong."""
    entries: dict[str, KFACSignificance | DiagonalSignificance] = {}
    try:
        for name, e in state["entries"].items():
            if e["kind"] == "kfac":
                entries[name] = KFACSignificance(name, e["U"], e["V"], e["omega"], e["retained_energy"])
            else:
                entries[name] = DiagonalSignificance(name, e["fisher"], e["source"])
        return PriorSignificance(entries, normalizer=state["normalizer"], num_examples=state["num_examples"],
                                 num_batches=state["num_batches"], objective=state["objective"],
                                 normalized=state["normalized"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"SRFT training state: malformed 'prior' ({type(e).__name__}: {e})") from None


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _tensors(tree[k])]
    return []


class SRFTState:
    """The SRFT training state of one `SRFTModel` as an object for ``accelerator.register_for_checkpointing``.

    ``state_dict()`` holds ``{"engine": <step, T, statistics, anchors, transfer state>, "prior": <significance>}``.
    ``load_state_dict`` first installs the saved prior (so the new process need not re-estimate it), then the saved
    anchors, statistics and step: the resumed run continues exactly where the saved one was.
    """

    def __init__(self, srft: SRFTModel) -> None:
        self.srft = srft

    def state_dict(self) -> dict[str, Any]:
        engine = self.srft._engine
        state: dict[str, Any] = {"engine": engine.state_dict()}
        if engine.prior is not None:
            state["prior"] = prior_to_state(engine.prior)
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        engine = self.srft._engine
        if not isinstance(state, dict) or "engine" not in state:
            raise ValueError(f"SRFT training state: expected a dict with 'engine' (and 'prior'), got {type(state).__name__}")
        prior = prior_from_state(state["prior"]) if "prior" in state else None
        check_training_state(engine, state["engine"], prior)  # all of it, before the prior is replaced
        if prior is not None:
            with warnings.catch_warnings():  # the anchors are restored right below, not taken from the weights
                warnings.filterwarnings("ignore", message="SRFT: the prior is set after")
                engine.set_prior(prior)
        engine.load_state_dict(state["engine"])


def sync_srft_state(srft: SRFTModel, src: int = 0) -> None:
    """Make the SRFT state of every process equal to process ``src``'s (one broadcast per tensor; no-op in a single
    process), and rebuild it on the parameters' device (``accelerator.prepare`` may have moved the model)."""
    engine = srft._engine
    state = SRFTState(srft).state_dict()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        device = engine.params[0].device
        step = torch.tensor([engine.step], dtype=torch.int64, device=device)
        dist.broadcast(step, src)
        state["engine"]["step"] = int(step.item())
        for t in _tensors(state):
            moved = t.to(device).contiguous()
            dist.broadcast(moved, src)
            t.copy_(moved)
    if engine.prior is not None or state["engine"]["tensors"]:
        SRFTState(srft).load_state_dict(state)


def prepare_srft(accelerator: Any, srft: Any, optimizer: Any, total_steps: Optional[int] = None, *,
                 checkpoint: bool = True) -> SRFTModel:
    """Attach SRFT to an accelerate training run; call it after ``accelerator.prepare``.

    ``srft`` is the `SRFTModel` or what ``prepare`` returned for it (DDP and compile wrappers are looked through);
    ``optimizer`` the (prepared) optimizer; ``total_steps`` the number of *optimizer* steps, i.e. with accumulation
    ``ceil(len(prepared_loader) / gradient_accumulation_steps) * epochs``. It

    1. makes the SRFT state (prior, anchors, statistics, step) identical on every process and puts it on the model's
       device (:func:`sync_srft_state`);
    2. hooks the torch optimizer inside the ``AcceleratedOptimizer`` (:meth:`SRFTModel.attach`);
    3. registers :class:`SRFTState` with ``accelerator.register_for_checkpointing`` (once per model and accelerator;
       ``checkpoint=False`` to skip), so ``save_state``/``load_state`` include it. Call ``load_state`` after this.

    Returns the `SRFTModel`.
    """
    model = find_srft_model(srft, accelerator)
    sync_srft_state(model)
    model.attach(optimizer, total_steps)
    if checkpoint:
        registered = getattr(accelerator, "_custom_objects", [])
        if not any(isinstance(o, SRFTState) and o.srft is model for o in registered):
            accelerator.register_for_checkpointing(SRFTState(model))
    return model
