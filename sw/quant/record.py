"""What hardware stores for one quantized weight tensor, and dequantization as a function of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import pwlq, pwlq_kernel
from .granularity import from_groups, group_strides, to_groups

from .names import METHODS  # noqa: F401 (re-exported: defined without torch for the CLI)


@dataclass
class QuantizedTensor:
    """Integer codes plus per-group parameters of one conv weight W[o, c, h, w].

    ``scale``/``zero_point`` are [G, R]: one (s, z) pair per group and region. Uniform methods have R = 1
    (symmetric ones with z = 0). PWLQ has R = 2: column 0 is the centre (z = 0), column 1 the tails.
    ``region`` (PWLQ only) is True where the tail applies; a tail code packs its sign in the top bit.
    """

    shape: tuple[int, int, int, int]
    method: str
    bits: int
    granularity: str
    codes: torch.Tensor              # int8, ``shape``: signed k-bit codes
    region: torch.Tensor | None      # bool, ``shape``; PWLQ only
    scale: torch.Tensor              # float64 [G, R]
    zero_point: torch.Tensor         # int64 [G, R]
    breakpoint: torch.Tensor | None = None  # float64 [G, 1]; PWLQ only

    @property
    def num_groups(self) -> int:
        return self.scale.shape[0]

    @property
    def regions(self) -> int:
        return self.scale.shape[1]

    @property
    def numel(self) -> int:
        return self.codes.numel()


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The weights the record represents: s (q - z), or PWLQ's s_c q (centre) and sgn (p + j s_t) (tails)."""
    if qt.region is None:
        codes = to_groups(qt.codes, qt.granularity).double()
        w = codes.sub_(qt.zero_point).mul_(qt.scale)  # s (q - z) in float64, rounded once below
    else:
        if dtype == torch.float32:  # the compiled kernel reads the weight's layout: no transposes
            fused = pwlq_kernel.dequantize(qt.codes, qt.region, qt.scale[:, :1], qt.scale[:, 1:], qt.breakpoint,
                                           qt.bits, group_strides(qt.shape, qt.granularity))
            if fused is not None:
                return fused
        codes, tail = to_groups(qt.codes, qt.granularity), to_groups(qt.region, qt.granularity)
        w = pwlq.dequantize(codes.float(), tail, qt.scale[:, :1], qt.scale[:, 1:], qt.breakpoint, qt.bits)
    return from_groups(w.to(dtype), qt.shape, qt.granularity)
