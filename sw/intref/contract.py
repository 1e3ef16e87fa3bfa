"""The integer contract: the arithmetic the FPGA performs for one quantized conv, defined once.

Both the hardware generator (``hw``) and every reference (``sw.intref``) import these objects; no width or
scale is ever re-typed on the hardware side.

Integer part (exact, what the processing element computes):

- activation: ``x = clamp(round(x_float / s_a) + z_a, -2^(A-1), 2^(A-1)-1)``, signed A-bit, with one float
  scale ``s_a`` and one integer zero-point ``z_a`` per tensor (round half to even). Every conv input in a
  YOLO net follows SiLU (>= -0.28) or is the image, so the zero-point puts almost all codes where the
  values are; a conv's zero padding is the code ``z_a``;
- weight: ``W = sgn * ((u - z) * S + B)``, an integer, where per weight ``u`` is the code (PWLQ tails: the
  low k-1 bits, unsigned, and ``sgn`` the code's top bit; otherwise ``sgn = +1``), and per group and region
  ``z`` is the integer zero-point (0 for symmetric and PWLQ), ``S = round(s * 2^E)`` the scale as an
  unsigned F-bit mantissa with one shift ``E`` per layer, and ``B`` the offset: 0, except in PWLQ tails,
  where it is the group's breakpoint in the scale domain, ``B = P = round(p * 2^E)`` (an unsigned integer of
  the layer's declared breakpoint width). So a PWLQ tail weight is ``sgn (j S_t + P)``: both the breakpoint
  and the tail's end are integer levels, as p and m are float ones;
- accumulator: ``acc = sum_i W_i x_i`` over the conv's fan-in ``N = c * kh * kw``, exact.

Integer addition is associative, so any ordering of the accumulation (lanes, group partial sums, a scale
applied per group partial sum instead of per product, zero-point terms applied to activation sums) gives the
same ``acc``. That is the contract the RTL must meet: equality of integers.

After the accumulator: the integer ``acc - z_a * sum(W)`` (sum over the output channel's kernel, a constant
per channel) removes the activation zero-point exactly; then, in float64, ``y = (acc - z_a sum(W)) * 2^-E *
s_a``; the conv bias, BN and the activation function follow in float32, as in the float model. The next conv
quantizes its own input again.

Accumulator width (:attr:`ContractFormat.acc_bits`): every factor lies in a closed integer interval fixed by
the widths alone: ``sgn (u - z)`` in ``[d_min, d_max]`` (code width k, zero-point width Z), ``S`` in
``[0, 2^F - 1]``, ``B`` in ``[0, 2^Bw - 1]``, ``x`` in ``[-2^(A-1), 2^(A-1)-1]``. Interval arithmetic gives
the exact range of ``W`` (:attr:`ContractFormat.weight_range`) and of one product ``W x``, so ``acc`` lies in
``[N p_min, N p_max]``, and the smallest two's complement width holding both ends cannot overflow for any
input. The bound is tight: N products all at the extreme corner (codes, zero-point, scale, breakpoint and
activations at their limits) reach it, and one bit less overflows (:meth:`ContractFormat.adversarial_corner`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import torch

from ..errors import QuantizationError
from ..quant.accounting import breakpoint_ints, breakpoint_width, scale_shift, zero_point_widths
from ..quant.granularity import group_index
from ..quant.pwlq import unpack_tail
from ..quant.record import QuantizedTensor

# The widths the contract supports, (lowest, highest), and its defaults: defined without torch in .bounds
# (the CLI reads them from there), re-exported here for hw and sim.
from .bounds import (ACT_BITS_RANGE, DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS,  # noqa: E402,F401
                     SCALE_BITS_RANGE, WEIGHT_BITS_RANGE)


def in_range(value: int, bounds: tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def signed_bits_for(lo: int, hi: int) -> int:
    """Fewest two's-complement bits holding every integer in [lo, hi]."""
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def interval_product(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    corners = [x * y for x in a for y in b]
    return min(corners), max(corners)


@dataclass(frozen=True)
class ActFormat:
    """Signed A-bit activation codes."""

    bits: int = DEFAULT_ACT_BITS

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1


@dataclass(frozen=True)
class ActQuant:
    """One tensor's activation quantizer: ``clamp(round(x / scale) + zero_point)`` to signed A bits."""

    bits: int
    scale: float
    zero_point: int

    def __post_init__(self):
        fmt = ActFormat(self.bits)
        if not (self.scale > 0 and math.isfinite(self.scale)) or not fmt.qmin <= self.zero_point <= fmt.qmax:
            raise QuantizationError(f"invalid activation quantizer: scale {self.scale}, zero-point "
                                    f"{self.zero_point} for {self.bits} bits")

    @classmethod
    def from_range(cls, bits: int, lo: float, hi: float) -> "ActQuant":
        """The quantizer whose codes span [lo, hi] (widened to contain 0, so 0.0 is exact)."""
        fmt = ActFormat(bits)
        lo, hi = min(lo, 0.0), max(hi, 0.0)
        if hi == lo:
            return cls(bits, 1.0, 0)
        scale = (hi - lo) / (fmt.qmax - fmt.qmin)
        zero_point = int(min(max(fmt.qmin - round(lo / scale), fmt.qmin), fmt.qmax))
        return cls(bits, scale, zero_point)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer-valued float64 codes (round half to even)."""
        fmt = ActFormat(self.bits)
        return torch.round(x.double() / self.scale).add_(self.zero_point).clamp_(fmt.qmin, fmt.qmax)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.double() - self.zero_point) * self.scale


@dataclass(frozen=True)
class ContractFormat:
    """The widths of one conv's integer arithmetic and every bound derived from them.

    This is all the hardware generator needs to size a processing element; :class:`LayerContract` adds a
    real layer's parameters to it.
    """

    weight_bits: int          # k
    pwlq: bool                # region bit present (R = 2 parameter sets per group)
    act_bits: int             # A
    scale_bits: int           # F
    zero_point_bits: int      # Z, declared width of the stored zero-points (0: none)
    fan_in: int               # N = c * kh * kw
    breakpoint_bits: int = 0  # Bw, declared unsigned width of PWLQ's stored breakpoints P (0: none)

    def __post_init__(self):
        if not in_range(self.weight_bits, WEIGHT_BITS_RANGE) or not in_range(self.act_bits, ACT_BITS_RANGE) \
                or not in_range(self.scale_bits, SCALE_BITS_RANGE) or not 0 <= self.zero_point_bits <= 32 \
                or self.fan_in < 1 or not 0 <= self.breakpoint_bits <= 40 \
                or (self.breakpoint_bits > 0) != self.pwlq or (self.pwlq and self.zero_point_bits):
            raise QuantizationError(f"unsupported contract format {self}")

    @property
    def regions(self) -> int:
        return 2 if self.pwlq else 1

    @property
    def act_range(self) -> tuple[int, int]:
        return -(1 << (self.act_bits - 1)), (1 << (self.act_bits - 1)) - 1

    @property
    def scale_range(self) -> tuple[int, int]:
        return 0, (1 << self.scale_bits) - 1

    @property
    def zero_point_range(self) -> tuple[int, int]:
        if self.zero_point_bits == 0:
            return 0, 0
        return -(1 << (self.zero_point_bits - 1)), (1 << (self.zero_point_bits - 1)) - 1

    @property
    def breakpoint_range(self) -> tuple[int, int]:
        return 0, (1 << self.breakpoint_bits) - 1

    @property
    def magnitude_range(self) -> tuple[int, int]:
        """Range of the value ``u`` a code contributes before its zero-point (PWLQ tails: j, k-1 bits unsigned)."""
        if self.pwlq:
            return 0, (1 << (self.weight_bits - 1)) - 1
        return -(1 << (self.weight_bits - 1)), (1 << (self.weight_bits - 1)) - 1

    @property
    def diff_range(self) -> tuple[int, int]:
        """Range of ``sgn * (u - z)`` for any code and any stored zero-point (PWLQ: both regions, both signs)."""
        zlo, zhi = self.zero_point_range
        if not self.pwlq:
            ulo, uhi = self.magnitude_range
            return ulo - zhi, uhi - zlo
        return -(1 << (self.weight_bits - 1)), (1 << (self.weight_bits - 1)) - 1  # the centre's; +-j lies within

    @property
    def weight_range(self) -> tuple[int, int]:
        """Range of the integer weight ``W`` (PWLQ: the centre's ``u S_c`` and the tails' ``+-(j S_t + B)``)."""
        if not self.pwlq:
            return interval_product(self.diff_range, self.scale_range)
        lo, hi = interval_product(self.diff_range, self.scale_range)
        tail = self.magnitude_range[1] * self.scale_range[1] + self.breakpoint_range[1]
        return min(lo, -tail), max(hi, tail)

    @property
    def product_range(self) -> tuple[int, int]:
        """Range of one accumulated term ``W x``."""
        return interval_product(self.weight_range, self.act_range)

    @property
    def acc_range(self) -> tuple[int, int]:
        lo, hi = self.product_range
        return self.fan_in * lo, self.fan_in * hi

    @property
    def acc_bits(self) -> int:
        """Accumulator width: cannot overflow for any codes, parameters and activations of these widths."""
        return signed_bits_for(*self.acc_range)

    @property
    def diff_bits(self) -> int:
        return signed_bits_for(*self.diff_range)

    @property
    def abs_sum_bound(self) -> int:
        """Bound on sum_i |W_i x_i|: no partial sum, in any order, exceeds it in magnitude."""
        lo, hi = self.product_range
        return self.fan_in * max(-lo, hi)

    def adversarial_corner(self) -> dict:
        """The weight and activation whose N-fold product sum reaches the end of ``acc_range`` that sets
        ``acc_bits``; the weight is an end of :attr:`weight_range`, reached by codes, zero-point, scale and
        breakpoint at their limits."""
        lo, hi = self.acc_range
        target = lo if -lo > hi else hi  # the end that needs the most bits
        for w in self.weight_range:
            for x in self.act_range:
                if self.fan_in * w * x == target:
                    return {"weight": w, "act": x, "acc": target}
        raise AssertionError("interval corner not found")  # interval arithmetic guarantees a corner attains it


def superset_format(formats: list[ContractFormat]) -> ContractFormat:
    """One format wide enough for every given layer (same k and PWLQ-ness): a PE sized by it computes
    every one of their accumulators exactly, since each width is an upper bound."""
    kinds = {(f.weight_bits, f.pwlq) for f in formats}
    if len(kinds) != 1:
        raise QuantizationError(f"layers mix code widths / methods {sorted(kinds)}; no common PE format")
    return ContractFormat(formats[0].weight_bits, formats[0].pwlq, max(f.act_bits for f in formats),
                          max(f.scale_bits for f in formats), max(f.zero_point_bits for f in formats),
                          max(f.fan_in for f in formats), max(f.breakpoint_bits for f in formats))


@dataclass
class LayerContract:
    """Everything integer about one quantized conv: its format plus per-group parameters and codes.

    Built from a :class:`~sw.quant.record.QuantizedTensor` by :meth:`from_record`; ``scale_int`` and
    ``zero_point`` are [G, R] (R = 2 for PWLQ: centre, tail); ``breakpoint`` (PWLQ) is P per group, int64 [G].
    """

    name: str
    shape: tuple[int, int, int, int]         # W[o, c, kh, kw]
    granularity: str
    fmt: ContractFormat
    shift: int                               # E
    scale_int: torch.Tensor                  # int64 [G, R], each in [0, 2^F - 1]
    zero_point: torch.Tensor                 # int64 [G, R]
    codes: torch.Tensor = field(repr=False)  # int8 [o, c, kh, kw]
    region: torch.Tensor | None = field(repr=False, default=None)
    breakpoint: torch.Tensor | None = field(repr=False, default=None)

    @classmethod
    def from_record(cls, name: str, qt: QuantizedTensor, act_bits: int = DEFAULT_ACT_BITS,
                    scale_bits: int = DEFAULT_SCALE_BITS) -> "LayerContract":
        if not in_range(act_bits, ACT_BITS_RANGE) or not in_range(scale_bits, SCALE_BITS_RANGE):
            raise QuantizationError(f"{name}: act_bits must be {'..'.join(map(str, ACT_BITS_RANGE))} and scale_bits "
                                    f"{'..'.join(map(str, SCALE_BITS_RANGE))}, got {act_bits} and {scale_bits}")
        e = scale_shift(qt.scale, scale_bits)
        scale_int = torch.round(qt.scale * 2.0 ** e).to(torch.int64)
        zw = max(zero_point_widths(qt))  # the accounting's declared widths; 0 = nothing stored
        bw = breakpoint_width(qt, scale_bits)
        _, c, kh, kw = qt.shape
        fmt = ContractFormat(qt.bits, qt.region is not None, act_bits, scale_bits, zw, c * kh * kw, bw)
        contract = cls(name, qt.shape, qt.granularity, fmt, e, scale_int, qt.zero_point.clone(), qt.codes,
                       qt.region, breakpoint_ints(qt, scale_bits))
        contract.check_fields()
        return contract

    def check_fields(self) -> None:
        """Every stored integer fits the field the hardware gives it; a value that does not is refused here,
        never truncated into a memory word."""
        f = self.fmt
        checks = [("weight codes", self.codes, (-(1 << (f.weight_bits - 1)), (1 << (f.weight_bits - 1)) - 1)),
                  ("scale mantissas", self.scale_int, f.scale_range),
                  ("zero-points", self.zero_point, f.zero_point_range)]
        if self.breakpoint is not None:
            checks.append(("breakpoints", self.breakpoint, f.breakpoint_range))
        for what, values, (lo, hi) in checks:
            if values.numel() and (int(values.min()) < lo or int(values.max()) > hi):
                raise QuantizationError(f"{self.name}: {what} {int(values.min())}..{int(values.max())} do not fit "
                                        f"their field ({lo}..{hi})")

    @property
    def num_groups(self) -> int:
        return self.scale_int.shape[0]

    # ---- the integer weights ---------------------------------------------------------------------------
    @cached_property
    def group_ids(self) -> torch.Tensor:
        return group_index(self.shape, self.granularity)

    def signed_diff(self) -> torch.Tensor:
        """``sgn * (u - z)`` per weight (int64, W's shape): the narrow factor the PE multiplies activations by."""
        codes = self.codes.to(torch.int64)
        g = self.group_ids
        if not self.fmt.pwlq:
            return codes - self.zero_point[g, 0]
        negative, j = unpack_tail(codes, self.fmt.weight_bits)
        return torch.where(self.region, torch.where(negative, -j, j), codes)

    def offset_int(self) -> torch.Tensor:
        """``sgn * B`` per weight (int64, W's shape): PWLQ tails' signed breakpoint, 0 elsewhere."""
        if not self.fmt.pwlq:
            return torch.zeros(self.shape, dtype=torch.int64)
        negative, _ = unpack_tail(self.codes.to(torch.int64), self.fmt.weight_bits)
        b = self.breakpoint[self.group_ids]
        return torch.where(self.region, torch.where(negative, -b, b), torch.zeros_like(b))

    def region_index(self) -> torch.Tensor:
        """Which parameter column each weight uses (0, or 1 for PWLQ tails)."""
        if not self.fmt.pwlq:
            return torch.zeros(self.shape, dtype=torch.int64)
        return self.region.to(torch.int64)

    def weight_int(self) -> torch.Tensor:
        """The integer weights ``W = sgn ((u - z) S + B)`` (int64, W's shape)."""
        return self.signed_diff() * self.scale_int[self.group_ids, self.region_index()] + self.offset_int()

    def weight_float(self) -> torch.Tensor:
        """What the hardware's weights are worth: ``W * 2^-E`` (float64)."""
        return self.weight_int().double() * 2.0 ** -self.shift

    def summary(self) -> dict:
        f = self.fmt
        return {"name": self.name, "shape": list(self.shape), "granularity": self.granularity,
                "weight_bits": f.weight_bits, "pwlq": f.pwlq, "act_bits": f.act_bits, "scale_bits": f.scale_bits,
                "shift": self.shift, "zero_point_bits": f.zero_point_bits, "breakpoint_bits": f.breakpoint_bits,
                "groups": self.num_groups,
                "regions": f.regions, "fan_in": f.fan_in, "diff_bits": f.diff_bits, "acc_bits": f.acc_bits}
