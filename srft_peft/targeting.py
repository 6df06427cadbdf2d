"""Choosing the regularized parameters from `target_modules` / `exclude_modules`.

A regex string must fully match a module name or a parameter name; a list holds exact names or dotted suffixes;
``"all-linear"`` takes every Linear/Conv2d outside the head; ``None`` takes every trainable parameter outside the head.

On a peft LoRA model the factors A and B of a (plain, Linear) LoRA adapter become targets of kind ``"lora_A"`` /
``"lora_B"`` (with ``prior_estimator="kfac"``): they share the prior of the layer's base weight, which penalises the
adapter's update s B A in that weight's tangent space (see `srft_peft.regularizer.lora_term`). Patterns also match the
LoRA layer's own name (``["query"]`` selects the adapters of ``...query``).

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

from .config import check_pattern

#: Module names (last component) treated as the output head and left out by the default presets.
HEAD_MODULE_NAMES = ("head", "heads", "classifier", "box_head", "lm_head", "pooler", "fc", "head_drop")

#: Target kinds of the two factors of a LoRA adapter.
LORA_KINDS = ("lora_A", "lora_B")

Pattern = Union[str, list[str], None]


@dataclass
class Target:
    """One regularized parameter.

    ``kind`` is ``"kfac"`` for the weight of a Linear or (groups=1) Conv2d whose Kronecker factors can be collected by
    hooks, ``"diagonal"`` otherwise, ``"lora_A"``/``"lora_B"`` for a LoRA factor (then ``module``/``module_name`` are the
    LoRA layer and ``prior_name`` names the base weight whose prior it uses). ``module`` is the owning module (None for
    parameters registered on a module that is not a layer, e.g. ``pos_embed``).
    """

    name: str
    param: nn.Parameter
    module_name: str
    module: nn.Module
    kind: str
    prior_name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.prior_name is None:
            self.prior_name = self.name

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


def _lora_factors(model: nn.Module) -> dict[int, tuple[str, nn.Module, str, str]]:
    """id(param) -> (LoRA layer name, layer, "lora_A"/"lora_B", base weight name) for the factors of every plain LoRA
    adapter on a Linear-like layer (peft's ``lora.Linear``; found by its attributes, peft is not imported). Adapters
    with a variant (DoRA, ...), a LoRA bias, or Conv/Embedding LoRA are left out: their update is not s B A."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    found: dict[int, tuple[str, nn.Module, str, str]] = {}
    for layer_name, layer in model.named_modules():
        lora_A, lora_B, scaling = (getattr(layer, k, None) for k in ("lora_A", "lora_B", "scaling"))
        if not (isinstance(lora_A, nn.ModuleDict) and isinstance(lora_B, nn.ModuleDict) and isinstance(scaling, dict)):
            continue
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else getattr(layer, "base_layer", None)
        weight = getattr(base, "weight", None)
        if not isinstance(weight, torch.Tensor) or id(weight) not in names:
            continue
        variants = getattr(layer, "lora_variant", {}) or {}
        for adapter, a in lora_A.items():
            b = lora_B[adapter] if adapter in lora_B else None
            plain = (isinstance(a, nn.Linear) and isinstance(b, nn.Linear) and a.bias is None and b.bias is None
                     and adapter in scaling and adapter not in variants
                     and not (getattr(layer, "use_dora", {}) or {}).get(adapter, False))
            if plain:
                found[id(a.weight)] = (layer_name, layer, "lora_A", names[id(weight)])
                found[id(b.weight)] = (layer_name, layer, "lora_B", names[id(weight)])
    return found


def select_targets(model: nn.Module, target_modules: Pattern, exclude_modules: Pattern,
                   estimator: str = "kfac") -> list[Target]:
    """The parameters SRFT regularizes, in ``model.named_parameters()`` order.

    Raises ``ValueError`` naming the pattern when it is not a valid regular expression, and listing some parameter
    names when a pattern matches nothing.
    """
    for field_name, pattern in (("target_modules", target_modules), ("exclude_modules", exclude_modules)):
        if isinstance(pattern, str) and pattern != "all-linear":
            check_pattern(field_name, pattern)
    owners: dict[int, tuple[str, nn.Module]] = {}
    for module_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            owners.setdefault(id(p), (module_name, module))
    lora = _lora_factors(model)

    selected: list[Target] = []
    for full_name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        module_name, module = owners[id(param)]
        local = full_name[len(module_name) + 1:] if module_name else full_name
        names = [module_name, full_name] + ([lora[id(param)][0]] if id(param) in lora else [])
        if target_modules is None:
            chosen = not _is_head(module_name)
        elif target_modules == "all-linear":
            chosen = isinstance(module, (nn.Linear, nn.Conv2d)) and not _is_head(module_name)
        else:
            chosen = any(_matches(n, target_modules) for n in names)
        if chosen and any(_matches(n, exclude_modules) for n in names):
            chosen = False
        if not chosen:
            continue
        kind = "kfac" if estimator == "kfac" and _kfac_capable(module, local) else "diagonal"
        selected.append(Target(full_name, param, module_name, module, kind))

    if estimator == "kfac" and lora:
        selected = _as_lora_targets(selected, lora)

    if not selected:
        names = [n for n, _ in model.named_parameters()]
        trainable = sum(p.requires_grad for p in model.parameters())
        raise ValueError(
            f"target_modules={target_modules!r} (exclude_modules={exclude_modules!r}) matches no trainable parameter "
            f"of {type(model).__name__} ({trainable} trainable of {len(names)}); some parameter names: "
            f"{names[:8]}{' ...' if len(names) > 8 else ''}"
        )
    return selected


def _as_lora_targets(selected: list[Target], lora: dict[int, tuple[str, nn.Module, str, str]]) -> list[Target]:
    """Turn the selected factors of complete LoRA pairs into ``lora_A``/``lora_B`` targets."""
    kinds: dict[tuple[int, str], set[str]] = {}
    for t in selected:
        if id(t.param) in lora:
            _, layer, kind, base_name = lora[id(t.param)]
            kinds.setdefault((id(layer), t.module_name.rsplit(".", 1)[-1]), set()).add(kind)
    out = []
    for t in selected:
        info = lora.get(id(t.param))
        if info is not None and kinds[(id(info[1]), t.module_name.rsplit(".", 1)[-1])] == set(LORA_KINDS):
            layer_name, layer, kind, base_name = info
            t = Target(t.name, t.param, layer_name, layer, kind, prior_name=base_name)
        out.append(t)
    return out


def calibration_targets(targets: list[Target]) -> list[Target]:
    """The targets whose prior is measured: LoRA factors are replaced by their layer's base weight, once per layer (a
    K-FAC target hooked on the LoRA layer, whose input and output gradient are those of the base weight)."""
    out: list[Target] = []
    seen: set[str] = set()
    for t in targets:
        if t.kind not in LORA_KINDS:
            out.append(t)
        elif t.prior_name not in seen:
            seen.add(t.prior_name)
            base = t.module.get_base_layer() if hasattr(t.module, "get_base_layer") else t.module.base_layer
            out.append(Target(t.prior_name, base.weight, t.module_name, t.module, "kfac"))
    return out


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
