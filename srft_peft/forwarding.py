"""Make an `SRFTModel` look like the model it wraps to tools that inspect ``forward``'s signature.

``transformers.Trainer`` keeps only the batch columns named in ``model.forward``'s signature, finds label names and
``return_loss`` from ``type(model).forward``, and decides whether to pass ``num_items_in_batch`` from it. A wrapper whose
``forward(*args, **kwargs)`` hides the wrapped signature breaks all three, so each SRFTModel instance gets a subclass
(cached per wrapped class) whose ``forward`` carries the wrapped model's signature and whose name is
``SRFTModel[<wrapped class>]``. Behaviour is unchanged: the subclass's ``forward`` is SRFTModel's.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

_CLASSES: dict[tuple[type, type], type] = {}
_GENERATED: set[type] = set()


def inner_model(model: nn.Module) -> nn.Module:
    """The model whose ``forward`` signature matters: through ``torch.compile`` wrappers and peft models."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        orig = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if isinstance(orig, nn.Module):
            model = orig
            continue
        if type(model).__module__.startswith("peft.") and hasattr(model, "get_base_model"):
            model = model.get_base_model()
            continue
    return model


def eager_module(model: nn.Module) -> nn.Module:
    """``model`` without ``torch.compile`` and (Distributed)DataParallel wrappers: calibration must run eagerly (its
    hooks do not fire inside a compiled graph) and outside DDP (which expects a backward after each forward)."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _rebuild(cls: type, wrapped_cls: type) -> Any:
    """Unpickling / deepcopy: an empty instance of the signature subclass (its state is set afterwards)."""
    return object.__new__(signature_class(cls, wrapped_cls))


def signature_class(cls: type, wrapped_cls: type) -> type:
    """The subclass of ``cls`` whose ``forward`` has the signature of ``wrapped_cls.forward`` (cached)."""
    key = (cls, wrapped_cls)
    if key in _CLASSES:
        return _CLASSES[key]
    try:
        signature = inspect.signature(wrapped_cls.forward)
    except (TypeError, ValueError, AttributeError):
        _CLASSES[key] = cls
        return cls

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return cls.forward(self, *args, **kwargs)

    forward.__signature__ = signature  # type: ignore[attr-defined]
    forward.__doc__ = cls.forward.__doc__
    forward.__qualname__ = f"{cls.__qualname__}.forward"

    def __reduce_ex__(self: Any, protocol: Any) -> Any:  # noqa: N807 - the pickle protocol's name
        return _rebuild, (cls, wrapped_cls), self.__dict__.copy()

    name = f"{cls.__name__}[{wrapped_cls.__name__}]"
    sub = type(name, (cls,), {"forward": forward, "__reduce_ex__": __reduce_ex__, "__module__": cls.__module__,
                              "__qualname__": name, "__doc__": cls.__doc__})
    _CLASSES[key] = sub
    _GENERATED.add(sub)
    return sub


def with_forward_signature(module: nn.Module, wrapped: nn.Module) -> None:
    """Switch ``module`` (an SRFTModel) to the subclass that shows ``wrapped``'s forward signature."""
    cls = type(module)
    if cls in _GENERATED:
        cls = cls.__mro__[1]
    module.__class__ = signature_class(cls, type(inner_model(wrapped)))


def accepts_loss_kwargs(wrapped: nn.Module) -> bool:
    """Whether ``transformers.Trainer`` would pass loss kwargs (``num_items_in_batch``) to ``wrapped`` itself."""
    inner = inner_model(wrapped)
    if hasattr(inner, "accepts_loss_kwargs"):
        return bool(inner.accepts_loss_kwargs)
    try:
        parameters = inspect.signature(inner.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
