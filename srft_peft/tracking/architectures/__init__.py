"""Tracker architectures: how an :class:`~srft_peft.tracking.OSTrackRGBX` embeds and fuses RGB and X, behind a
registry keyed by ``TrackerConfig.mode``.

An architecture is a :class:`TrackerArchitecture` subclass in a module of its own, registered under its mode with
:func:`register_architecture`. It owns what differs between trackers: the modules it adds to the shared RGB
``backbone`` and ``box_head``, how it copies an RGB tracker's weights into them, how it turns template and search
crops into tokens, which input channels it reads, and the **role** of every parameter (:data:`ROLES`). The rest of
the toolkit asks the architecture instead of testing the mode: ``prior_scope`` reads the roles, the fine-tuning
methods train the roles it trains, checkpoints load RGB weights into the RGB roles, evaluation feeds it the channels
it reads. Built in: ``rgb`` (:mod:`.rgb`), ``dual_stream`` (:mod:`.dual_stream`), ``prompt`` (:mod:`.prompt`).

Example (a new architecture: one module with this class, plus a test):
    >>> import torch
    >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig
    >>> from srft_peft.tracking.architectures import ARCHITECTURES, register_architecture
    >>> from srft_peft.tracking.architectures.rgb import RGBArchitecture
    >>> @register_architecture("mean_input")
    ... class MeanInput(RGBArchitecture):
    ...     '''The RGB tracker on the mean of the RGB and X images.'''
    ...     input_channels = (6,)
    ...     def features(self, model, template, search, kept):
    ...         mean = lambda t: (t[:, :3] + t[:, 3:]) / 2
    ...         return super().features(model, mean(template), mean(search), kept)
    >>> model = OSTrackRGBX(TrackerConfig(variant="tiny", mode="mean_input", template_size=32, search_size=64))
    >>> model(torch.zeros(1, 6, 32, 32), torch.zeros(1, 6, 64, 64)).pred_boxes.shape
    torch.Size([1, 4])
    >>> del ARCHITECTURES["mean_input"]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

#: The tracker an architecture works on, an :class:`~srft_peft.tracking.OSTrackRGBX`, named here without importing it:
#: the model's module imports this registry, so an import back would be a cycle.
OSTrackRGBX = nn.Module

__all__ = ["ARCHITECTURES", "ROLES", "TrackerArchitecture", "architecture_names", "get_architecture",
           "register_architecture"]

#: The roles a parameter (state-dict key) can play:
#: ``patch_embed`` (the RGB patch embedding), ``backbone`` (the rest of the RGB trunk), ``x_patch_embed`` (the patch
#: embedding of the X image), ``x_backbone`` (the rest of an X stream), ``fusion`` (where RGB and X tokens meet:
#: fusion blocks, prompt blocks) and ``head`` (the box head).
ROLES = ("patch_embed", "backbone", "x_patch_embed", "x_backbone", "fusion", "head")
#: The roles an RGB tracker's checkpoint fills (OSTrack's ``backbone.*`` and ``box_head.*``).
RGB_ROLES = ("patch_embed", "backbone", "head")


class TrackerArchitecture:
    """One tracker architecture. Subclasses override what differs; the defaults are the plain RGB tracker's.

    Class attributes:
        input_channels: the channel counts of the crops it accepts (the first is what it is built for).
        role_prefixes: ``(state-dict key prefix, role)`` pairs, the first matching prefix wins; every key of the
            model must match one.
        trained_roles: the roles whose parameters train (the others are frozen when the model is built).
        has_x_stream: it runs a full X stream beside the RGB one (what the ``prior_scope`` choices other than
            ``"all"`` are defined for).
    """

    name: ClassVar[str] = ""
    input_channels: ClassVar[tuple[int, ...]] = (6,)
    role_prefixes: ClassVar[tuple[tuple[str, str], ...]] = (
        ("backbone.patch_embed.", "patch_embed"), ("backbone.", "backbone"), ("box_head.", "head"))
    trained_roles: ClassVar[tuple[str, ...]] = ROLES
    has_x_stream: ClassVar[bool] = False

    def build(self, model: OSTrackRGBX) -> None:
        """Add the architecture's own modules to ``model`` (which already has ``backbone`` and ``box_head``)."""

    @torch.no_grad()
    def init_from_rgb(self, model: OSTrackRGBX, rgb: Callable[[str], dict[str, torch.Tensor]],
                      fusion_init: str) -> None:
        """Copy RGB weights into the architecture's own modules; ``rgb(prefix)`` is the RGB state dict under
        ``prefix`` (prefix removed). ``backbone`` and ``box_head`` are already loaded."""

    def features(self, model: OSTrackRGBX, template: torch.Tensor, search: torch.Tensor,
                 kept: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The normalized joint tokens (B, Nz + k, D) of checked crops, and the search indices ``kept`` after
        candidate elimination (run the blocks through :func:`~srft_peft.tracking.layers.apply_block`)."""
        raise NotImplementedError

    def zero_initialized(self, model: OSTrackRGBX, fusion_init: str) -> list[str]:
        """Parameters that :meth:`init_from_rgb` sets to zero under ``fusion_init`` (they start as "no effect", not
        as an RGB function)."""
        return []

    def parameter_roles(self, model: OSTrackRGBX) -> dict[str, str]:
        """``{state-dict key: role}`` for every parameter and buffer of ``model``.

        Example:
            >>> from srft_peft.tracking import OSTrackRGBX, TrackerConfig
            >>> m = OSTrackRGBX(TrackerConfig(variant="tiny", mode="dual_stream"))
            >>> roles = m.architecture.parameter_roles(m)
            >>> [roles[k] for k in ("backbone_x.patch_embed.proj.bias", "fusion.3.attn.qkv.bias", "box_head.conv5_ctr.bias")]
            ['x_patch_embed', 'fusion', 'head']
        """
        roles = {}
        for key in model.state_dict():
            role = next((r for prefix, r in self.role_prefixes if key.startswith(prefix)), None)
            if role is None:
                raise ValueError(f"architecture {self.name!r}: state-dict key {key!r} matches none of its "
                                 f"role_prefixes {[p for p, _ in self.role_prefixes]}")
            roles[key] = role
        return roles

    def names_with_roles(self, model: OSTrackRGBX, roles: tuple[str, ...]) -> list[str]:
        """The parameter names of ``model`` (in order) whose role is one of ``roles``."""
        of = self.parameter_roles(model)
        return [n for n, _ in model.named_parameters() if of[n] in roles]


#: mode -> the registered architecture (an instance of its class).
ARCHITECTURES: dict[str, TrackerArchitecture] = {}


def register_architecture(name: str) -> Callable[[type[TrackerArchitecture]], type[TrackerArchitecture]]:
    """Class decorator: register a :class:`TrackerArchitecture` subclass as ``TrackerConfig(mode=name)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an architecture name must be a non-empty string, got {name!r}")

    def register(cls: type[TrackerArchitecture]) -> type[TrackerArchitecture]:
        if not (isinstance(cls, type) and issubclass(cls, TrackerArchitecture)):
            raise TypeError(f"register_architecture({name!r}) needs a TrackerArchitecture subclass, got {cls!r}")
        if name in ARCHITECTURES:
            raise ValueError(f"a tracker architecture named {name!r} is already registered "
                             f"({type(ARCHITECTURES[name]).__qualname__})")
        unknown = sorted({r for _, r in cls.role_prefixes} - set(ROLES)) + sorted(set(cls.trained_roles) - set(ROLES))
        if unknown:
            raise ValueError(f"architecture {name!r} uses unknown roles {unknown}; roles are {list(ROLES)}")
        cls.name = name
        ARCHITECTURES[name] = cls()
        return cls

    return register


def architecture_names() -> list[str]:
    """The registered modes, sorted."""
    return sorted(ARCHITECTURES)


def get_architecture(name: str) -> TrackerArchitecture:
    """The architecture registered as ``name``; an unknown name is a ``ValueError`` listing the registered ones."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ValueError(f"mode must be one of the registered tracker architectures {architecture_names()}, "
                         f"got {name!r}") from None
