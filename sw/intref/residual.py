"""The integer residual add (YOLOv5's C3 bottlenecks): two code tensors summed into the sum's own quantizer.

Inputs ``x_i`` (signed A-bit codes, scale ``s_i``, zero-point ``z_i``) and the output quantizer ``(s_o, z_o)``:

    out = clamp(floor((sum_i (x_i - z_i) * M_i + 2^(R-1)) / 2^R) + z_o)        (R = 0: no half added)

with unsigned ``multiplier_bits`` mantissas ``M_i`` and ONE shift ``R`` for the whole add: ``M_i 2^-R`` stands
for ``s_i / s_o``. ``R`` is the shift :func:`~sw.intref.epilogue.multiplier_and_shift` gives the larger ratio
(so its mantissa uses all its bits), and the other input's mantissa is rounded at that same shift. One shift
keeps the hardware to two multiplies, one adder and one rounding shifter; the smaller ratio loses only the
bits by which the two ratios differ (YOLO's residual inputs have scales within a few times of each other).
The rounding is the epilogue's requantizer's (:data:`~sw.intref.epilogue.ROUNDING`: add half, arithmetic shift
right), so one rule rounds everywhere in the network. The sum fits ``A + 1 + multiplier_bits + 1`` signed bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QuantizationError
from .contract import ActFormat, ActQuant
from .epilogue import DEFAULT_MULTIPLIER_BITS, EpilogueFormat, multiplier_and_shift


@dataclass(frozen=True)
class ResidualAdd:
    """One integer add: per input its quantizer and mantissa ``M_i``; the common shift ``R``; the output's."""

    name: str
    inputs: tuple[ActQuant, ...]
    multipliers: tuple[int, ...]
    shift: int
    out: ActQuant

    @classmethod
    def derive(cls, name: str, inputs: tuple[ActQuant, ...], out: ActQuant,
               multiplier_bits: int = DEFAULT_MULTIPLIER_BITS) -> "ResidualAdd":
        if len({q.bits for q in inputs} | {out.bits}) != 1:
            raise QuantizationError(f"{name}: residual add of {[q.bits for q in inputs]}-bit codes into "
                                    f"{out.bits} bits; every code must have the same width")
        # the multiplier's field and shift range as the epilogue declares them for a centred code (A + 1 bits)
        fmt = EpilogueFormat(out.bits + 1, 1, out.bits, multiplier_bits=multiplier_bits)
        ratios = [q.scale / out.scale for q in inputs]
        _, shift = multiplier_and_shift(max(ratios), fmt)
        multipliers = tuple(round(r * 2.0 ** shift) for r in ratios)
        if max(multipliers) > fmt.multiplier_range[1]:
            raise QuantizationError(f"{name}: residual multipliers {multipliers} exceed {multiplier_bits} bits")
        return cls(name, tuple(inputs), multipliers, shift, out)

    def apply(self, *codes: torch.Tensor) -> torch.Tensor:
        """The output codes (int64) of the inputs' int64 codes."""
        if len(codes) != len(self.inputs):
            raise QuantizationError(f"{self.name}: {len(codes)} inputs, the add has {len(self.inputs)}")
        total = sum((c - q.zero_point) * m for c, q, m in zip(codes, self.inputs, self.multipliers))
        if self.shift:
            total = (total + (1 << (self.shift - 1))) >> self.shift
        fmt = ActFormat(self.out.bits)
        return (total + self.out.zero_point).clamp_(fmt.qmin, fmt.qmax)
