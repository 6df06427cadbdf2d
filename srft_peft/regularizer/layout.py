"""One flat buffer per kind of per-element state, laid out so the hot path runs few, fused kernels.

K-FAC matrices of the same (m, n, k_out, k_in) form a *group*: their slices of a flat buffer are contiguous, so the group
is one (L, m, n) tensor for batched matmuls while each member is also a view in its parameter's shape for ``_foreach``
ops. Every other parameter follows, one view each. Buffers are float32 (:data:`STATE_DTYPE`) whatever the parameters'
dtype: SRFT's state and arithmetic stay in float32 for bf16/fp16 models, which only receive the results.

Example:
    >>> import torch
    >>> layout = FlatLayout.build([torch.zeros(2, 3), torch.zeros(4)], group_keys=[("g",), None])
    >>> buf = layout.new_buffer()
    >>> [tuple(v.shape) for v in layout.views(buf)], layout.numel
    ([(2, 3), (4,)], 10)
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch

#: The dtype of SRFT's state (significance, anchors, statistics, workspace) and of its arithmetic.
STATE_DTYPE = torch.float32


@dataclass
class Group:
    key: Hashable
    members: list[int]  # indices into the parameter list, in layout order
    offset: int
    matrix: tuple[int, int]  # (m, n)

    def stack(self, flat: torch.Tensor) -> torch.Tensor:
        """The group's slice of ``flat`` as an (L, m, n) tensor (a view)."""
        m, n = self.matrix
        return flat[self.offset:self.offset + len(self.members) * m * n].view(len(self.members), m, n)


class FlatLayout:
    """Where each parameter's elements live inside a flat buffer."""

    def __init__(self, shapes: list[torch.Size], offsets: list[int], groups: list[Group], numel: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.shapes, self.offsets, self.groups, self.numel = shapes, offsets, groups, numel
        self.device, self.dtype = device, dtype

    @classmethod
    def build(cls, params: Sequence[torch.Tensor], group_keys: Sequence[Optional[Hashable]]) -> FlatLayout:
        """Lay out ``params``; those with the same non-None group key become one contiguous group."""
        offsets = [0] * len(params)
        groups: dict[Hashable, list[int]] = {}
        for i, key in enumerate(group_keys):
            if key is not None:
                groups.setdefault(key, []).append(i)
        cursor = 0
        group_list = []
        for key, members in groups.items():
            p = params[members[0]]
            group_list.append(Group(key, members, cursor, (p.shape[0], p[0].numel())))
            for i in members:
                offsets[i] = cursor
                cursor += params[i].numel()
        for i, key in enumerate(group_keys):
            if key is None:
                offsets[i] = cursor
                cursor += params[i].numel()
        device = params[0].device if params else torch.device("cpu")
        return cls([p.shape for p in params], offsets, group_list, cursor, device, STATE_DTYPE)

    def new_buffer(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return torch.zeros(self.numel, device=self.device, dtype=dtype or self.dtype)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of ``flat`` in the parameters' shapes, in parameter order."""
        return [flat[o:o + s.numel()].view(s) for o, s in zip(self.offsets, self.shapes)]
