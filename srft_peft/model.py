"""`SRFTModel` and `get_srft_model`: the peft-style entry point.

Example:
    >>> import timm, torch
    >>> from srft_peft import SRFTConfig, get_srft_model
    >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8)
    >>> srft = get_srft_model(vit, SRFTConfig(prior_rank=4, total_steps=10))
    >>> _ = srft.estimate_prior([torch.randn(4, 3, 32, 32)], progress=False)
    >>> opt = torch.optim.AdamW(srft.parameters(), lr=1e-3, weight_decay=0.0)
    >>> srft.attach(opt)
    >>> srft(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import (
    TENSORS_FILE_GLOB,
    PathLike,
    SignificanceCheckpoint,
    config_with_overrides,
    load_significance_checkpoint,
    matching_prior,
    save_significance,
    transfer_snapshot,
)
from .config import SRFTConfig
from .forwarding import accepts_loss_kwargs, eager_module, with_forward_signature
from .hub import push_folder
from .regularizer.engine import SRFTEngine
from .significance.estimation import LossFn, estimate_prior_significance, model_loss
from .significance.prior import PriorSignificance
from .targeting import LORA_KINDS, Target, calibration_targets, same_device_dtype, select_targets
from .weights import load_weights, read_weights, save_weights

#: For each accelerator, the models whose :class:`SRFTState` it checkpoints (each is registered once).
_CHECKPOINTED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SummaryTable(list):
    """Rows of :meth:`SRFTModel.significance_summary`; ``str()`` renders an aligned table."""

    columns = ("name", "kind", "rank", "retained_energy", "mean", "max", "parameters", "source")

    def __str__(self) -> str:
        def fmt(value: Any) -> str:
            return f"{value:.4g}" if isinstance(value, float) else str(value)

        cells = [list(self.columns)] + [[fmt(row[c]) for c in self.columns] for row in self]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
        return "\n".join([lines[0], "-" * len(lines[0])] + lines[1:])


def check_model(model: Any) -> None:
    """Raise ``TypeError`` naming what was passed unless ``model`` is an ``nn.Module``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__} {model!r:.80}")


def check_estimate_args(dataloader: Any, loss_fn: Any, num_batches: Any) -> None:
    """Raise naming the argument and its value unless the arguments of ``estimate_prior`` are usable."""
    if dataloader is None or isinstance(dataloader, (str, bytes)) or not isinstance(dataloader, Iterable):
        raise TypeError(f"dataloader must be an iterable of batches, got {type(dataloader).__name__} {dataloader!r:.80}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(model, batch) or None, got {loss_fn!r:.80}")
    if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                    or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")


class SRFTModel(nn.Module):
    """A model under Significance-Regularized Fine-Tuning. Calls and attributes go to the wrapped model.

    Use :func:`get_srft_model` to build one. The regularized parameters are the model's own (no copy); SRFT's state
    (significance, anchors, statistics, step) is kept outside the module's parameters and buffers, so DDP does not
    broadcast it and ``state_dict()`` holds only the model, in the model's own keys.
    """

    def __init__(self, model: nn.Module, config: SRFTConfig) -> None:
        super().__init__()
        check_model(model)
        if not isinstance(config, SRFTConfig):
            raise TypeError(f"config must be an SRFTConfig, got {type(config).__name__}")
        targets = select_targets(model, config.target_modules, config.exclude_modules, config.prior_estimator)
        meta = next((t.name for t in targets if t.param.is_meta), None)
        if meta is not None:
            raise ValueError(f"parameter {meta!r} is on the meta device (it holds no values): materialize and load the "
                             "weights (e.g. model.to_empty(device=...) then load_state_dict) before get_srft_model")
        same_device_dtype(targets)
        self.base_model = model
        object.__setattr__(self, "srft_config", config)
        object.__setattr__(self, "_engine", SRFTEngine(config, targets))
        object.__setattr__(self, "_warned_unattached", False)
        with_forward_signature(self, model)  # forward shows the wrapped model's signature (transformers.Trainer)

    # --- attribute forwarding (like peft) ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    def _apply(self, fn: Any, recurse: bool = True) -> SRFTModel:
        """``.to``/``.cuda``/``.half``/... move the model, then SRFT's state follows it (its dtype stays float32)."""
        super()._apply(fn, recurse)
        engine = self.__dict__.get("_engine")
        if engine is not None:
            current = dict(self.base_model.named_parameters(remove_duplicate=False))
            for i, t in enumerate(engine.targets):  # new Parameter objects if torch overwrites them on conversion
                if current.get(t.name) is not None and current[t.name] is not t.param:
                    t.param = engine.params[i] = current[t.name]
            engine.follow_parameters()
        return self

    def get_base_model(self) -> nn.Module:
        """The wrapped model, with its (fine-tuned) weights."""
        return self.base_model

    def unload(self) -> nn.Module:
        """Remove SRFT's optimizer hooks and return the wrapped model, with its fine-tuned weights.

        SRFT adds no modules or hooks to the model itself (it changes the weights the optimizer writes), so, unlike
        peft, there is nothing to take out of it: the returned model is the plain base model (same object, same
        class). This `SRFTModel` stays usable: ``attach`` a new optimizer to continue.
        """
        self.detach()
        return self.base_model

    def merge_and_unload(self) -> nn.Module:
        """Same as :meth:`unload`: SRFT trains the model's own weights, so there is nothing to merge. A peft model
        inside keeps its adapters: call its own ``merge_and_unload()`` on the result."""
        return self.unload()

    # --- weights in the wrapped model's own format ------------------------------------------------------------------
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """The wrapped model's state dict in its own keys (no ``base_model.`` prefix): the weights files that
        ``transformers.Trainer`` (``save_model``, checkpoints) and ``accelerate.save_state`` write load straight into
        the base model class. SRFT's own state is not in it (see :meth:`srft_state_dict`)."""
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        inner = prefix + "base_model."
        for key in [k for k in out if k.startswith(inner)]:
            out[prefix + key[len(inner):]] = out.pop(key)
        metadata = getattr(out, "_metadata", None)
        if metadata is not None:
            for key in [k for k in metadata if k == inner[:-1] or k.startswith(inner)]:
                metadata[prefix + key[len(inner):]] = metadata.pop(key)
        return out

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Accept the wrapped model's own keys (what :meth:`state_dict` writes) as well as ``base_model.``-prefixed
        ones (older files)."""
        inner = prefix + "base_model."
        if not any(k.startswith(inner) for k in state_dict):
            for key in [k for k in state_dict if k.startswith(prefix)]:
                state_dict[inner + key[len(prefix):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args)

    # --- forward ----------------------------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)``; with ``apply="loss"`` in training, ``lambda_p(t) R_prior`` is added to ``.loss``."""
        out = self.base_model(*args, **kwargs)
        if self.training and torch.is_grad_enabled():
            engine = self._engine
            if not engine.attached and not self._warned_unattached:
                object.__setattr__(self, "_warned_unattached", True)
                warnings.warn("SRFT: training forward without an attached optimizer; call srft.attach(optimizer) (or "
                              "use SRFTCallback with transformers.Trainer) or no regularization is applied",
                              stacklevel=2)
            if self.srft_config.apply == "loss":
                loss = model_loss(out)
                if loss is not None:
                    total = loss + engine.loss_term().to(loss.dtype)
                    if isinstance(out, dict) or hasattr(out, "keys"):
                        out["loss"] = total
                    else:
                        out.loss = total
        return out

    # --- the method -------------------------------------------------------------------------------------------------
    def estimate_prior(self, dataloader: Iterable, loss_fn: Optional[LossFn] = None,
                       num_batches: Optional[int] = None, progress: bool = True) -> PriorSignificance:
        """Measure prior significance on pretraining-domain batches and anchor the prior at the current weights.

        ``loss_fn(model, batch) -> scalar`` is the calibration objective (a batch mean); without it the model's
        ``.loss`` is used when it returns one, else 1/2 ||f(x)||^2 (see ``calibration_objective``).
        """
        check_estimate_args(dataloader, loss_fn, num_batches)
        prior = estimate_prior_significance(eager_module(self.base_model), calibration_targets(self._engine.targets),
                                            dataloader, self.srft_config, loss_fn=loss_fn, num_batches=num_batches,
                                            progress=progress)
        self.set_prior(prior)
        return prior

    def set_prior(self, prior: PriorSignificance) -> None:
        """Use an existing prior significance (e.g. loaded from a checkpoint), anchored at the current weights.

        The prior must be normalized (``prior.normalize()``, or built with ``normalized=True``); a raw one is a
        ``ValueError``. Checkpoints written by ``save_pretrained`` hold normalized significances and load as such."""
        self._engine.set_prior(prior)

    @property
    def prior(self) -> Optional[PriorSignificance]:
        return self._engine.prior

    def attach(self, optimizer: Any, total_steps: Optional[int] = None, accelerator: Any = None, *,
               checkpoint: bool = True) -> None:
        """Hook ``optimizer``: the prior gradient before each step, the transfer damping after it.

        ``total_steps`` (T) overrides ``SRFTConfig.total_steps``. Works with wrapped optimizers such as accelerate's.
        With ``accelerator`` (an ``accelerate.Accelerator``, after ``prepare``) it first makes the SRFT state identical
        on every process (:meth:`sync_srft_state`) and, with ``checkpoint``, registers an :class:`SRFTState` with
        ``accelerator.register_for_checkpointing`` (once per accelerator) so ``save_state``/``load_state`` include it:
        see :func:`srft_peft.integrations.accelerate.prepare_srft`.
        """
        if accelerator is not None:
            self.sync_srft_state()
        self._engine.attach(optimizer, total_steps)
        registered = _CHECKPOINTED.setdefault(accelerator, weakref.WeakSet()) if accelerator is not None else None
        if registered is not None and checkpoint and self not in registered:
            accelerator.register_for_checkpointing(SRFTState(self))
            registered.add(self)

    @property
    def attached(self) -> bool:
        """Whether an optimizer is attached (its hooks are in place)."""
        return self._engine.attached

    def detach(self) -> None:
        """Remove the optimizer hooks (the model and its weights stay as they are)."""
        self._engine.detach()

    def add_prior_gradient(self, scaler: Optional[torch.amp.GradScaler] = None) -> None:
        """Add the prior gradient lambda_p(t) grad R_prior to the gradients now, so that gradient clipping sees it.

        For ``apply="grad"`` (the optimizer hook adds it after clipping otherwise, which makes the effective lambda
        depend on the clip). Call it after the last ``backward()`` of an optimizer step and before clipping::

            loss.backward()
            srft.add_prior_gradient()
            torch.nn.utils.clip_grad_norm_(srft.parameters(), max_norm)
            optimizer.step()                     # SRFT's hook does not add the prior gradient again

        It counts once per optimizer step: each gradient tensor receives it once (a repeated call, also after a further
        micro-batch's ``backward()`` or after clipping, adds nothing to it), and the optimizer step consumes it.

        With a GradScaler pass it, ``scaler=scaler``: before ``scaler.unscale_(optimizer)`` (or accelerate's
        ``clip_grad_norm_``, which unscales) the gradients are scaled and the prior gradient is scaled with them, after
        it the prior gradient is added unscaled; either way the update is exact. Passing it also tells a new scaler
        iteration from a repeated call after a step the scaler skipped, when the gradient tensors are reused
        (``zero_grad(set_to_none=False)``). Without a prior, or at lambda_p(t) = 0, there is nothing to add.

        Raises:
            RuntimeError: no optimizer is attached, ``apply`` is not ``"grad"``, no regularized parameter has a
                gradient yet, or the call comes after ``scaler.step`` in the same iteration.

        Under ``prior_application="decoupled"`` or ``"proximal"`` it does nothing: the prior acts on the weights after
        the optimizer step and never enters the gradient, so the gradient that clipping sees is the task's alone (a
        loop written for ``"gradient"`` keeps working unchanged).
            TypeError: ``scaler`` is not a ``torch.amp.GradScaler``.
        """
        self._engine.add_prior_gradient(scaler)

    def monitor(self, enabled: bool = True) -> None:
        """Turn the balance monitor on (or off): from the next optimizer step on, `balance` returns the norms of that
        step's parts. Off by default, and then it costs nothing; on, one float32 buffer of the regularized parameters'
        size and a few fused passes per step, no host sync (the values stay on the device until `balance` reads them).

        Example:
            >>> srft.monitor()                                          # doctest: +SKIP
            >>> loss.backward(); optimizer.step()                       # doctest: +SKIP
            >>> srft.balance()                                          # doctest: +SKIP
            {'task_update': 0.012, 'prior': 0.0031, 'damping': 0.0, 'drift': 0.2}
        """
        self._engine.monitor(enabled)

    def balance(self) -> dict[str, float]:
        """The last monitored optimizer step, as norms over the regularized parameters (see `monitor`): ``task_update``
        ||theta' - theta_t|| (the optimizer's step), ``prior`` the prior's pull (decoupled) or shrink (proximal) applied
        after it (under ``prior_application="gradient"``: eta lambda_p ||grad R_prior||, the pull before the optimizer
        rescales it), ``damping`` what the transfer damping removed, ``drift`` the distance from theta0 along the kept
        directions after the step. A prior that pins shows ``prior`` close to ``task_update`` and a flat ``drift``; an
        inert one ``prior`` near 0. One host sync (call it when logging). Empty before the first monitored step."""
        return self._engine.balance()

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Read by ``transformers.Trainer``: whether to pass ``num_items_in_batch`` and skip its division of the loss by
        the accumulation steps. False with ``apply="loss"`` (the penalty added to every micro-batch's loss must be
        averaged over the micro-batches to count once per optimizer step), else what the wrapped model says."""
        return self.srft_config.apply != "loss" and accepts_loss_kwargs(self.base_model)

    def srft_loss(self) -> torch.Tensor:
        """lambda_p(t) R_prior at the current weights, for hand-written loops with ``apply="loss"``."""
        return self._engine.loss_term()

    def prior_penalty(self) -> torch.Tensor:
        """R_prior at the current weights (without lambda_p(t))."""
        return self._engine.penalty()

    @property
    def kappa(self) -> float:
        """kappa(t) at the current step."""
        return self._engine.kappa()

    @property
    def step(self) -> int:
        """Optimizer steps taken under SRFT (saved and restored with the SRFT state). Settable, e.g. to continue the
        schedule at a resumed trainer's step when no SRFT state was saved."""
        return self._engine.step

    @step.setter
    def step(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"step must be a non-negative integer, got {value!r}")
        self._engine.step = value

    @property
    def regularized_parameters(self) -> list[str]:
        return list(self._engine.names)

    @property
    def regularized_targets(self) -> list[Target]:
        """The regularized parameters as :class:`~srft_peft.targeting.Target` records (name, parameter, kind, ...)."""
        return list(self._engine.targets)

    def significance_summary(self) -> SummaryTable:
        """Per-parameter table: kind (kfac/diagonal), rank, retained energy, mean/max significance, parameters."""
        if self._engine.prior is None:
            raise RuntimeError("no prior significance yet: call srft.estimate_prior(...) or load one first")
        return SummaryTable(self._engine.prior.summary_rows())

    def srft_state_dict(self) -> dict[str, Any]:
        """The training state of SRFT (step, T, statistics, anchors) for exact resumption."""
        return self._engine.state_dict()

    def load_srft_state_dict(self, state: dict[str, Any]) -> None:
        self._engine.load_state_dict(state)

    def training_state(self) -> dict[str, Any]:
        """``{"engine": srft_state_dict(), "prior": prior.to_state()}``: everything to resume exactly, also the prior
        (see :mod:`srft_peft.regularizer.state`)."""
        return self._engine.training_state()

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Install a :meth:`training_state`: the prior, then the anchors, statistics and step; validated first."""
        self._engine.load_training_state(state)

    def sync_srft_state(self, src: int = 0) -> None:
        """Make the SRFT state of every process equal to process ``src``'s (one broadcast per tensor; no-op in a single
        process), and rebuild it on the parameters' device (``accelerator.prepare`` may have moved the model)."""
        engine = self._engine
        state = self.training_state()
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
            self.load_training_state(state)

    def memory_footprint(self) -> dict[str, int]:
        """Bytes SRFT keeps beside the model, by role (workspace, statistics, prior, ...), and the regularized
        parameters' own bytes under ``"parameters"``."""
        return self._engine.memory_bytes()

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts of the wrapped model, like peft's."""
        params = list(self.base_model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- significance checkpoints (srft_peft.checkpoint) -------------------------------------------------------------
    def save_pretrained(self, save_directory: PathLike, include_transfer_state: bool = False,
                        is_main_process: bool = True, state_dict: Optional[dict[str, torch.Tensor]] = None,
                        **kwargs: Any) -> None:
        """Write the prior significance (and, optionally, the transfer state v and step) to ``save_directory``. With
        ``state_dict`` (the wrapped model's weights, e.g. ``srft.state_dict()``; what ``SRFTTrainer.save_model``
        passes) also the fine-tuned weights, ``model.safetensors`` (+ the base model's ``config.json``), which
        :meth:`from_pretrained` then loads. Other processes than the main one (``is_main_process=False``, as in peft)
        write nothing. Further keyword arguments of transformers' ``save_pretrained`` (``safe_serialization``, ...)
        are accepted and ignored: SRFT writes safetensors only.

        Example:
            >>> srft.save_pretrained("ostrack256-rgb-significance")  # doctest: +SKIP
            >>> srft.save_pretrained("finetuned-rgbt", state_dict=srft.state_dict())  # doctest: +SKIP
        """
        if not is_main_process:
            return
        weights_file = None
        if state_dict is not None:
            folder = Path(save_directory)
            folder.mkdir(parents=True, exist_ok=True)
            weights_file = save_weights(folder, state_dict, self.base_model).name
        self._save_significance(save_directory, include_transfer_state, weights_file=weights_file)

    @classmethod
    def from_pretrained(cls, model: nn.Module, dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                        cache_dir: Optional[PathLike] = None, token: Union[str, bool, None] = None,
                        **config_overrides: Any) -> SRFTModel:
        """Wrap ``model`` with a saved config (``config_overrides`` applied) and load its significance; the anchor
        theta0 is ``model``'s current weights. Fields that define the significance
        (:data:`srft_peft.checkpoint.ESTIMATION_FIELDS`) cannot be overridden. A folder saved with fine-tuned weights
        (``save_pretrained(dir, state_dict=...)``, ``SRFTTrainer.save_model``) also loads them into ``model``, after
        the prior was anchored at its (pretrained) weights; they are checked before anything is set.

        Example:
            >>> srft = SRFTModel.from_pretrained(tracker, "user/ostrack256-rgb", total_steps=20_000)  # doctest: +SKIP
        """
        if isinstance(model, cls):
            raise ValueError("the model is already an SRFTModel; use srft.load_significance(...)")
        checkpoint = load_significance_checkpoint(dir_or_repo_id, revision, cache_dir=cache_dir, token=token)
        weights = read_weights(checkpoint.weights_path, model) if checkpoint.weights_path is not None else None
        srft = cls(model, config_with_overrides(checkpoint, config_overrides))
        srft._apply_checkpoint(checkpoint)  # anchored at the weights ``model`` has now: the pretrained ones
        if weights is not None:
            load_weights(model, weights)
        return srft

    def load_significance(self, dir_or_repo_id: PathLike, revision: Optional[str] = None, *,
                          cache_dir: Optional[PathLike] = None,
                          token: Union[str, bool, None] = None) -> PriorSignificance:
        """Load a saved prior significance into this model, anchored at the current weights (strict and atomic).

        Example:
            >>> prior = srft.load_significance("ostrack256-rgb-significance")  # doctest: +SKIP
        """
        checkpoint = load_significance_checkpoint(dir_or_repo_id, revision, cache_dir=cache_dir, token=token)
        return self._apply_checkpoint(checkpoint)

    def push_to_hub(self, repo_id: str, private: Optional[bool] = None,
                    commit_message: str = "Upload SRFT significance", token: Union[str, bool, None] = None,
                    include_transfer_state: bool = False) -> Any:
        """Create ``repo_id`` if needed and upload what ``save_pretrained`` writes; returns the commit info.

        Example:
            >>> srft.push_to_hub("user/ostrack256-rgb-significance").commit_url  # doctest: +SKIP
        """
        def write(folder: Path) -> Path:
            return self._save_significance(folder, include_transfer_state, repo_id)

        return push_folder(repo_id, write, private=private, commit_message=commit_message, token=token,
                           delete_patterns=[TENSORS_FILE_GLOB])

    def _save_significance(self, folder: PathLike, include_transfer_state: bool, repo_id: Optional[str] = None,
                           weights_file: Optional[str] = None) -> Path:
        engine = self._engine
        transfer = engine.transfer_snapshot() if include_transfer_state else None
        return save_significance(engine.prior, engine.config, engine.targets, self.base_model, folder, transfer,
                                 repo_id, weights_file)

    def _apply_checkpoint(self, checkpoint: SignificanceCheckpoint) -> PriorSignificance:
        """Validate ``checkpoint`` against the regularized parameters, then set its prior (anchored at the current
        weights) and transfer state. Nothing is changed when validation fails."""
        engine = self._engine
        prior = matching_prior(checkpoint, engine.targets)
        engine.set_prior(prior)
        transfer = transfer_snapshot(checkpoint)
        if transfer is not None:
            engine.load_transfer_snapshot(transfer)
        return prior

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        regularized = sum(p.numel() for p in self._engine.params)
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
              f" || SRFT-regularized params: {regularized:,d}")


def get_srft_model(model: nn.Module, config: Optional[SRFTConfig] = None) -> SRFTModel:
    """Wrap ``model`` for SRFT. ``config=None`` uses ``SRFTConfig()`` (the backbone without its head).

    Example:
        >>> import torch.nn as nn
        >>> srft = get_srft_model(nn.Sequential(nn.Linear(3, 3)), SRFTConfig(target_modules=["0"]))
        >>> srft.regularized_parameters
        ['0.weight', '0.bias']
    """
    if isinstance(model, SRFTModel):
        raise ValueError("the model is already an SRFTModel")
    srft = SRFTModel(model, config if config is not None else SRFTConfig())
    plain = [t.name for t in srft.regularized_targets if t.kind not in LORA_KINDS and ".lora_" in t.name]
    if plain:
        warnings.warn(f"SRFT: {len(plain)} LoRA parameters (e.g. {plain[0]!r}) are regularized as ordinary parameters "
                      "toward their initial values, not through the base weight's prior (LoRA variant, LoRA bias, "
                      "Conv/Embedding LoRA, or prior_estimator='diagonal')", stacklevel=2)
    return srft


class SRFTState:
    """The SRFT training state of one `SRFTModel` as an object for ``accelerator.register_for_checkpointing``.

    ``state_dict()`` is :meth:`SRFTModel.training_state` (``{"engine": ..., "prior": ...}``), ``load_state_dict``
    :meth:`SRFTModel.load_training_state`: the resumed run continues exactly where the saved one was.
    """

    def __init__(self, srft: SRFTModel) -> None:
        self.srft = srft

    def state_dict(self) -> dict[str, Any]:
        return self.srft.training_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.srft.load_training_state(state)


def _tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors of a nested dict, in sorted-key order (the same on every process)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _tensors(tree[k])]
    return []
