"""Granularity: which weights of W[o, c, h, w] share quantization parameters.

A granularity is the set of axes that index a group; the remaining axes run over the group's members.

| granularity | group axes  | one group per          |
|-------------|-------------|------------------------|
| layer       | ()          | layer                  |
| filter      | (o)         | output filter          |
| channel     | (o, c)      | kernel (h x w) of one filter and input channel |
| fshape      | (c, h, w)   | position across all filters |
| cshape      | (o, h, w)   | position of a filter, across its input channels |

:func:`to_groups` lays a tensor out as a [G, N] matrix (one row per group) so that every quantizer works on
all groups of a layer at once; :func:`from_groups` undoes it. There is no per-granularity code elsewhere.
"""

from __future__ import annotations

import torch

from ..errors import QuantizationError
from .names import GROUP_AXES, MIXES, SINGLE  # noqa: F401 (re-exported: defined without torch for the CLI)


def check_granularity(name: str) -> None:
    if name not in GROUP_AXES:
        raise QuantizationError(f"unknown granularity {name!r}; choose one of {', '.join(SINGLE)}")


def _permutation(granularity: str) -> tuple[int, ...]:
    axes = GROUP_AXES[granularity]
    return axes + tuple(a for a in range(4) if a not in axes)


def to_groups(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """[o, c, h, w] -> [G, N]: row g holds the N members of group g (a copy unless already contiguous)."""
    check_granularity(granularity)
    axes = GROUP_AXES[granularity]
    g = 1
    for a in axes:
        g *= w.shape[a]
    return w.permute(_permutation(granularity)).reshape(g, -1)


def from_groups(groups: torch.Tensor, shape: tuple[int, ...], granularity: str) -> torch.Tensor:
    """Inverse of :func:`to_groups` for a tensor of the layer's ``shape``."""
    perm = _permutation(granularity)
    permuted_shape = tuple(shape[a] for a in perm)
    inverse = [perm.index(a) for a in range(4)]
    return groups.reshape(permuted_shape).permute(inverse).contiguous()


def num_groups(shape: tuple[int, ...], granularity: str) -> int:
    n = 1
    for a in GROUP_AXES[granularity]:
        n *= shape[a]
    return n


def group_strides(shape: tuple[int, ...], granularity: str) -> tuple[int, int, int, int]:
    """(s_o, s_c, s_h, s_w): weight (o, c, h, w) belongs to group o s_o + c s_c + h s_h + w s_w, the row of
    :func:`to_groups` (row-major over the group axes; 0 for the axes that run over a group's members)."""
    strides, step = [0, 0, 0, 0], 1
    for a in reversed(GROUP_AXES[granularity]):
        strides[a] = step
        step *= shape[a]
    return tuple(strides)


def group_index(shape: tuple[int, ...], granularity: str) -> torch.Tensor:
    """The group id of every weight, shape [o, c, h, w] (row-major over the group axes)."""
    ids = torch.zeros(shape, dtype=torch.int64)
    for axis, stride in enumerate(group_strides(shape, granularity)):
        view = [1, 1, 1, 1]
        view[axis] = shape[axis]
        ids += torch.arange(shape[axis], dtype=torch.int64).view(view) * stride
    return ids
