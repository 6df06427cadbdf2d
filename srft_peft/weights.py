"""The fine-tuned model weights saved beside a significance checkpoint (``model.safetensors``, the model's own keys).

``SRFTModel.save_pretrained(dir, state_dict=...)`` (what ``SRFTTrainer.save_model`` calls) writes them, with the base
model's ``config.json`` when it has a Hugging Face config, so the folder loads both with ``SRFTModel.from_pretrained``
(the prior anchored at the pretrained weights, then these weights) and with ``<ModelClass>.from_pretrained``.

Example:
    >>> import tempfile, torch.nn as nn
    >>> folder = Path(tempfile.mkdtemp())
    >>> net = nn.Linear(2, 2)
    >>> save_weights(folder, net.state_dict(), net).name
    'model.safetensors'
    >>> other = nn.Linear(2, 2)
    >>> load_weights(other, read_weights(folder / WEIGHTS_NAME, other))
    >>> bool((other.weight == net.weight).all())
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import atomic

#: File name of the weights (the name transformers' ``save_pretrained`` and ``Trainer`` use).
WEIGHTS_NAME = "model.safetensors"


def unshared(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` on the CPU without aliases: a tensor that is another key's (tied weights) is stored once, under
    its first key; tensors sharing memory otherwise are copied (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, t in state_dict.items():
        t = t.detach()
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if ident in seen:
            continue
        seen[ident] = key
        ptr = t.untyped_storage().data_ptr()
        shared = ptr in storages
        storages.add(ptr)
        t = t.cpu().contiguous()
        out[key] = t.clone() if shared else t
    return out


def save_model_config(model: Any, folder: Path) -> None:
    """Write ``model``'s ``config.json`` (and ``generation_config.json`` when it generates) into ``folder``, so that a
    ``model.safetensors`` there loads with ``from_pretrained``; nothing for a model without a Hugging Face config."""
    config = getattr(model, "config", None)
    if callable(getattr(config, "save_pretrained", None)):
        config.save_pretrained(folder)
    can_generate = getattr(model, "can_generate", None)
    generation = getattr(model, "generation_config", None)
    if callable(can_generate) and can_generate() and generation is not None:
        generation.save_pretrained(folder)


def save_weights(folder: Path, state_dict: dict[str, torch.Tensor], model: nn.Module) -> Path:
    """Write ``state_dict`` (``model``'s weights, its own keys) to ``folder / model.safetensors`` atomically, and the
    model's Hugging Face config beside it."""
    tensors = unshared(state_dict)
    path = atomic.write_file(folder, WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    save_model_config(model, folder)
    return path


def read_weights(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights in ``path``, checked against ``model`` (nothing is set): every key must be one of the model's, with
    its shape; a key that is not in the file must be tied to one that is (the same tensor in the model)."""
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from e
    own = model.state_dict(keep_vars=True)
    for key, t in weights.items():
        if key not in own:
            raise ValueError(f"{path}: weight {key!r} is not a parameter or buffer of {type(model).__name__}")
        if tuple(t.shape) != tuple(own[key].shape):
            raise ValueError(f"{path}: weight {key!r} has shape {tuple(t.shape)}, the model's {tuple(own[key].shape)}")
    loaded = {id(own[k]) for k in weights}
    missing = next((k for k, v in own.items() if k not in weights and id(v) not in loaded), None)
    if missing is not None:
        raise ValueError(f"{path}: the model's {missing!r} is missing (saved from another model?)")
    return weights


@torch.no_grad()
def load_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy :func:`read_weights`' result into ``model`` (tied weights follow their loaded twin)."""
    model.load_state_dict(weights, strict=False)
