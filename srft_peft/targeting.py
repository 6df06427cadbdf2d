"""Choosing the regularized parameters from `target_modules` / `exclude_modules`.

A regex string must fully match a module name or a parameter name; a list holds exact names or dotted suffixes;
``"all-linear"`` takes every Linear/Conv2d outside the head; ``None`` takes every trainable parameter outside the head.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> [t.name for t in select_targets(model, ["0"], None)]
    ['0.weight', '0.bias']
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

#: Module names (last component) treated as the output head and left out by the default presets.
HEAD_MODULE_NAMES = ("head", "heads", "classifier", "box_head", "lm_head", "pooler", "fc", "head_drop")

Pattern = Union[str, list[str], None]


@dataclass
class Target:
    """One regularized parameter.

    ``kind`` is ``"kfac"`` for the weight of a Linear or (groups=1) Conv2d whose Kronecker factors can be collected by
    hooks, ``"diagonal"`` otherwise. ``module`` is the owning module (None for parameters registered on a module that is
    not a layer, e.g. ``pos_embed``).
    """

    name: str
    param: nn.Parameter
    module_name: str
    module: nn.Module
    kind: str

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(out, in) of the weight seen as a matrix (a Conv2d kernel is flattened over its patch)."""
        return self.param.shape[0], self.param[0].numel()


def _matches(name: str, pattern: Pattern) -> bool:
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == p or name.endswith("." + p) for p in pattern)


def _is_head(module_name: str) -> bool:
    return any(part in HEAD_MODULE_NAMES for part in module_name.split("."))


def _kfac_capable(module: nn.Module, param_name: str) -> bool:
    if param_name != "weight":
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and isinstance(module.padding, tuple)


def select_targets(model: nn.Module, target_modules: Pattern, exclude_modules: Pattern,
                   estimator: str = "kfac") -> list[Target]:
    """The parameters SRFT regularizes, in ``model.named_parameters()`` order.

    Raises ``ValueError`` listing some parameter names when a pattern matches nothing.
    """
    owners: dict[int, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), (module_name, module))

    selected: list[Target] = []
    for full_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module_name, module = owners[id(param)]
        local = full_name[len(module_name) + 1:] if module_name else full_name
        if target_modules is None:
            chosen = not _is_head(module_name)
        elif target_modules == "all-linear":
            chosen = isinstance(module, (nn.Linear, nn.Conv2d)) and not _is_head(module_name)
        else:
            chosen = _matches(module_name, target_modules) or _matches(full_name, target_modules)
        if chosen and (_matches(module_name, exclude_modules) or _matches(full_name, exclude_modules)):
            chosen = False
        if not chosen:
            continue
        kind = "kfac" if estimator == "kfac" and _kfac_capable(module, local) else "diagonal"
        selected.append(Target(full_name, param, module_name, module, kind))

    if not selected:
        names = [n for n, _ in model.named_parameters()]
        trainable = sum(p.requires_grad for p in model.parameters())
        raise ValueError(
            f"target_modules={target_modules!r} (exclude_modules={exclude_modules!r}) matches no trainable parameter "
            f"of {type(model).__name__} ({trainable} trainable of {len(names)}); some parameter names: "
            f"{names[:8]}{' ...' if len(names) > 8 else ''}"
        )
    return selected


def find_module(model: nn.Module, name: str) -> Optional[nn.Module]:
    """The submodule called ``name`` or None."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def count_parameters(targets: list[Target]) -> int:
    return sum(t.param.numel() for t in targets)


def same_device_dtype(targets: list[Target]) -> tuple[torch.device, torch.dtype]:
    """The single device/dtype of the targets; mixed ones raise a clear error."""
    devices = {t.param.device for t in targets}
    dtypes = {t.param.dtype for t in targets}
    if len(devices) > 1:
        raise ValueError(f"regularized parameters live on several devices {sorted(map(str, devices))}; move the model "
                         "to one device before get_srft_model")
    if len(dtypes) > 1:
        raise ValueError(f"regularized parameters have several dtypes {sorted(map(str, dtypes))}; SRFT needs one")
    return devices.pop(), dtypes.pop()
