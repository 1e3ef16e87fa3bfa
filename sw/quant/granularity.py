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


def group_index(shape: tuple[int, ...], granularity: str) -> torch.Tensor:
    """The group id of every weight, shape [o, c, h, w] (row-major over the group axes)."""
    g = num_groups(shape, granularity)
    n = 1
    for s in shape:
        n *= s
    ids = torch.arange(g, dtype=torch.int64).repeat_interleave(n // g)
    return from_groups(ids, shape, granularity)
