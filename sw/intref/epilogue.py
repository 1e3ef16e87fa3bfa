"""The integer epilogue: from a conv's accumulator to the next layer's activation codes, defined once.

The processing element ends at the exact accumulator ``acc`` (:mod:`sw.intref.contract`). The epilogue turns
it into the A-bit codes the next layer consumes, in integers only, per output channel ``c``:

1. **Offset.** ``t = acc + K_c`` with ``K_c = B_c - z_a * sum(W_c)``: the activation zero-point's term (exact,
   a constant per channel) and the bias ``B_c = round(bias_c / (2^-E s_a))`` rounded to the accumulator's
   scale. BatchNorm was folded into the conv's weights and bias before quantization, so its per-channel
   scale is already in ``W`` and only this bias is left of it.
2. **Requantize.** ``p = sat_P(floor((t * M_c + 2^(R_c - 1)) / 2^R_c))`` (``2^(R_c-1)`` is 0 when ``R_c = 0``):
   an unsigned ``multiplier_bits`` mantissa ``M_c`` and a shift ``R_c`` stand for the real multiplier
   ``2^-E s_a / s_pre``; the rounding rule is round half up (add half, arithmetic shift right, as
   TFLite's and FINN's fixed-point requantizers do) and the result saturates to a signed ``pre_bits``
   pre-activation code ``p`` whose value is ``p * s_pre`` (symmetric: the value 0 is the code 0).
3. **Activate and requantize.** ``out = LUT[p + 2^(P-1)]``, with
   ``LUT[i] = clamp(round(act((i - 2^(P-1)) s_pre) / s_out) + z_out)`` to the consumer's signed ``out_bits``
   code (round half to even, in float64, offline). A table indexed by the pre-activation code is exact for
   any activation (SiLU, LeakyReLU(0.1), identity), costs one block RAM read in hardware, and is the only
   place the activation function exists.

Widths. ``pre_bits`` defaults to A + 4: SiLU's slope is at most 1.1, so with the pre-activation and output
ranges alike each output step spans about 16 pre-activation codes and the table's own rounding adds a
small fraction of an output step (the calibration picks ``s_pre`` from the observed pre-activation range).
``multiplier_bits`` defaults to 16: relative error of ``M_c`` at most 2^-16 after normalisation, below the
code step of any pre-activation code width up to 16 bits, and one 18x18 DSP input on ECP5 and Xilinx parts.

Overflow. Every intermediate lies in an interval fixed by the widths alone: ``acc`` in the accumulator's
two's complement range, ``K_c`` in the signed ``offset_bits`` range, ``M_c`` in ``[0, 2^multiplier_bits - 1]``
and ``R_c`` in ``[0, max_shift]`` (default: one less than the product's width, beyond which every
product rounds to 0 or -1). Interval arithmetic gives :attr:`EpilogueFormat.sum_range`,
:attr:`EpilogueFormat.product_range` and :attr:`EpilogueFormat.rounded_range`, and the smallest two's
complement widths holding them cannot overflow for any input; :meth:`EpilogueFormat.corners` reaches their
ends, which is how the tests show the widths are tight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import QuantizationError
from ..intref.packing import Field
from .contract import ActQuant, interval_product, signed_bits_for

#: The requantizer's rounding rule (step 2): add half an output step, then shift right arithmetically.
ROUNDING = "half-up"
#: Default widths; see the module docstring for why.
DEFAULT_MULTIPLIER_BITS = 16
PRE_BITS_OVER_ACT = 4
#: The widest intermediate the int64 reference (and so the contract) accepts.
MAX_INTERMEDIATE_BITS = 62

#: The activation functions a table can hold, by the name the model's modules map to (:func:`activation_name`).
ACTIVATIONS = {
    "silu": lambda x: x / (1.0 + torch.exp(-x)),
    "leaky_relu_0.1": lambda x: torch.where(x >= 0, x, 0.1 * x),
    "identity": lambda x: x,
}


def activation_name(module: torch.nn.Module) -> str:
    """The :data:`ACTIVATIONS` key of a model's activation module; anything else is refused by name."""
    if isinstance(module, torch.nn.SiLU):
        return "silu"
    if isinstance(module, torch.nn.LeakyReLU) and module.negative_slope == 0.1:
        return "leaky_relu_0.1"
    if isinstance(module, torch.nn.Identity):
        return "identity"
    raise QuantizationError(f"activation {module!r} has no integer epilogue (supported: {', '.join(ACTIVATIONS)})")


@dataclass(frozen=True)
class EpilogueFormat:
    """The widths of one layer's epilogue and every bound derived from them (what the RTL is sized by)."""

    acc_bits: int                                  # the PE's accumulator (ContractFormat.acc_bits)
    offset_bits: int                               # K_c, signed
    out_bits: int                                  # the consumer's activation code width A
    pre_bits: int = 0                              # P, signed pre-activation code (0: out_bits + 4)
    multiplier_bits: int = DEFAULT_MULTIPLIER_BITS  # M_c, unsigned
    max_shift: int = 0                             # largest R_c (0: product_bits - 1)

    def __post_init__(self):
        if self.pre_bits == 0:
            object.__setattr__(self, "pre_bits", self.out_bits + PRE_BITS_OVER_ACT)
        if not (2 <= self.acc_bits <= 56 and 1 <= self.offset_bits <= 56 and 2 <= self.out_bits <= 16
                and 2 <= self.pre_bits <= 16 and 1 <= self.multiplier_bits <= 32 and self.max_shift >= 0):
            raise QuantizationError(f"unsupported epilogue format {self}")
        if self.max_shift == 0:
            object.__setattr__(self, "max_shift", self.product_bits - 1)
        if signed_bits_for(*self.rounded_range) > MAX_INTERMEDIATE_BITS:
            raise QuantizationError(f"epilogue format {self} needs {signed_bits_for(*self.rounded_range)}-bit "
                                    f"intermediates; at most {MAX_INTERMEDIATE_BITS} are supported")

    # ---- parameter ranges -----------------------------------------------------------------------------
    @property
    def acc_range(self) -> tuple[int, int]:
        return -(1 << (self.acc_bits - 1)), (1 << (self.acc_bits - 1)) - 1

    @property
    def offset_range(self) -> tuple[int, int]:
        return -(1 << (self.offset_bits - 1)), (1 << (self.offset_bits - 1)) - 1

    @property
    def multiplier_range(self) -> tuple[int, int]:
        return 0, (1 << self.multiplier_bits) - 1

    @property
    def shift_range(self) -> tuple[int, int]:
        return 0, self.max_shift

    @property
    def shift_bits(self) -> int:
        """Width of the stored (unsigned) shift."""
        return max(1, self.max_shift.bit_length())

    @property
    def pre_range(self) -> tuple[int, int]:
        return -(1 << (self.pre_bits - 1)), (1 << (self.pre_bits - 1)) - 1

    @property
    def out_range(self) -> tuple[int, int]:
        return -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1

    @property
    def lut_entries(self) -> int:
        return 1 << self.pre_bits

    # ---- derived intermediate ranges and widths -------------------------------------------------------
    @property
    def sum_range(self) -> tuple[int, int]:
        """``t = acc + K_c``."""
        return self.acc_range[0] + self.offset_range[0], self.acc_range[1] + self.offset_range[1]

    @property
    def product_range(self) -> tuple[int, int]:
        """``t * M_c``."""
        return interval_product(self.sum_range, self.multiplier_range)

    @property
    def rounded_range(self) -> tuple[int, int]:
        """``t * M_c + 2^(R_c - 1)``: the largest rounding constant is ``2^(max_shift - 1)``."""
        half = 1 << (self.max_shift - 1) if self.max_shift else 0
        return self.product_range[0], self.product_range[1] + half

    @property
    def sum_bits(self) -> int:
        return signed_bits_for(*self.sum_range)

    @property
    def product_bits(self) -> int:
        return signed_bits_for(*self.product_range)

    @property
    def rounded_bits(self) -> int:
        return signed_bits_for(*self.rounded_range)

    def corners(self) -> list[dict]:
        """Parameter and accumulator values at which ``t``, ``t * M`` and the rounded sum reach their ends."""
        (alo, ahi), (klo, khi), (_, mhi), (_, rhi) = (self.acc_range, self.offset_range, self.multiplier_range,
                                                      self.shift_range)
        return [{"acc": alo, "offset": klo, "multiplier": mhi, "shift": rhi},
                {"acc": ahi, "offset": khi, "multiplier": mhi, "shift": rhi}]

    # ---- the parameter word the hardware stores per output channel (LSB first) ------------------------
    @property
    def param_fields(self) -> list[Field]:
        return [Field("offset", self.offset_bits, True), Field("multiplier", self.multiplier_bits, False),
                Field("shift", self.shift_bits, False)]

    @property
    def param_bits(self) -> int:
        return sum(f.width for f in self.param_fields)


def requantize(t: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, fmt: EpilogueFormat) -> torch.Tensor:
    """Step 2 on int64 tensors (``multiplier`` and ``shift`` broadcast against ``t``): the pre-activation codes."""
    half = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0), torch.zeros_like(shift))
    p = (t * multiplier + half) >> shift  # arithmetic shift: floor division by 2^shift
    return p.clamp_(*fmt.pre_range)


def multiplier_and_shift(real: float, fmt: EpilogueFormat) -> tuple[int, int]:
    """``(M, R)`` with ``M * 2^-R`` closest to ``real`` > 0: the mantissa normalised to use all its bits, with
    the shift in its field; refused by name when no such pair exists."""
    if not (real > 0 and math.isfinite(real)):
        raise QuantizationError(f"requantization multiplier {real} is not a positive finite number")
    mant_hi = fmt.multiplier_range[1]
    shift = fmt.multiplier_bits - 1 - math.floor(math.log2(real))
    shift = min(max(shift, 0), fmt.shift_range[1])
    m = round(real * 2.0 ** shift)
    if m > mant_hi and shift > 0:  # rounding up reached 2^bits
        shift -= 1
        m = round(real * 2.0 ** shift)
    if not 0 < m <= mant_hi:
        raise QuantizationError(f"requantization multiplier {real:.3g} does not fit {fmt.multiplier_bits} mantissa "
                                f"bits and shifts 0..{fmt.shift_range[1]}")
    return m, shift


def activation_table(activation: str, pre_scale: float, out: ActQuant, fmt: EpilogueFormat) -> torch.Tensor:
    """Step 3's table (int64 [2^P]): entry ``i`` is the consumer's code of ``act((i - 2^(P-1)) * pre_scale)``."""
    if activation not in ACTIVATIONS:
        raise QuantizationError(f"unknown activation {activation!r} (supported: {', '.join(ACTIVATIONS)})")
    if out.bits != fmt.out_bits:
        raise QuantizationError(f"consumer quantizer has {out.bits} bits, epilogue format {fmt.out_bits}")
    pre = torch.arange(fmt.pre_range[0], fmt.pre_range[1] + 1, dtype=torch.float64) * pre_scale
    return out.quantize(ACTIVATIONS[activation](pre)).to(torch.int64)


@dataclass
class LayerEpilogue:
    """One layer's epilogue: its format, per-channel ``K_c, M_c, R_c`` (int64 [o]) and its table (int64 [2^P]).

    ``pre_scale`` is the value of one pre-activation code and ``out`` the consumer's quantizer; they are
    kept for dequantizing and reporting, never used by :meth:`apply`, which is integers only.
    """

    name: str
    fmt: EpilogueFormat
    offset: torch.Tensor
    multiplier: torch.Tensor
    shift: torch.Tensor
    table: torch.Tensor = field(repr=False)
    activation: str = "silu"
    pre_scale: float = 1.0
    out: ActQuant | None = None

    def __post_init__(self):
        self.check_fields()

    def check_fields(self) -> None:
        """Every stored integer fits its field; a value that does not is refused, never truncated."""
        f = self.fmt
        n = self.offset.numel()
        if self.multiplier.numel() != n or self.shift.numel() != n or self.table.numel() != f.lut_entries:
            raise QuantizationError(f"{self.name}: epilogue parameters have {n}, {self.multiplier.numel()} and "
                                    f"{self.shift.numel()} channels and {self.table.numel()} table entries "
                                    f"(format: {f.lut_entries})")
        for what, values, (lo, hi) in [("offsets", self.offset, f.offset_range),
                                       ("multipliers", self.multiplier, f.multiplier_range),
                                       ("shifts", self.shift, f.shift_range), ("table", self.table, f.out_range)]:
            if values.numel() and (int(values.min()) < lo or int(values.max()) > hi):
                raise QuantizationError(f"{self.name}: epilogue {what} {int(values.min())}..{int(values.max())} "
                                        f"do not fit their field ({lo}..{hi})")

    @property
    def channels(self) -> int:
        return self.offset.numel()

    def pre_activation(self, acc: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """Steps 1 and 2: int64 pre-activation codes of int64 accumulators (channels along ``channel_dim``)."""
        lo, hi = self.fmt.acc_range
        if acc.numel() and (int(acc.min()) < lo or int(acc.max()) > hi):
            raise QuantizationError(f"{self.name}: accumulators outside the {self.fmt.acc_bits}-bit range")
        view = [1] * acc.dim()
        view[channel_dim] = -1
        t = acc + self.offset.view(view)
        return requantize(t, self.multiplier.view(view), self.shift.view(view), self.fmt)

    def apply(self, acc: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
        """The whole epilogue: int64 output codes of int64 accumulators."""
        pre = self.pre_activation(acc, channel_dim)
        return self.table[pre - self.fmt.pre_range[0]]


def superset_epilogue_format(formats: list[EpilogueFormat]) -> EpilogueFormat:
    """One format wide enough for every given layer's epilogue (each width an upper bound), as
    :func:`~sw.intref.contract.superset_format` is for the PE."""
    if not formats:
        raise QuantizationError("no epilogue formats to cover")
    return EpilogueFormat(max(f.acc_bits for f in formats), max(f.offset_bits for f in formats),
                          max(f.out_bits for f in formats), max(f.pre_bits for f in formats),
                          max(f.multiplier_bits for f in formats), max(f.max_shift for f in formats))


def epilogue_offsets(contract, act_in: ActQuant, bias: torch.Tensor | None) -> torch.Tensor:
    """Step 1's ``K_c = B_c - z_a * sum(W_c)`` (int64 [o]), ``B_c`` the bias (in the conv output's units)
    rounded to the accumulator's scale ``2^-E s_a``."""
    acc_lsb = 2.0 ** -contract.shift * act_in.scale
    channels = contract.shape[0]
    bias_int = torch.zeros(channels, dtype=torch.int64) if bias is None else \
        torch.round(bias.detach().double() / acc_lsb).to(torch.int64)
    return bias_int - act_in.zero_point * contract.weight_int().sum((1, 2, 3))


def derive_epilogue(contract, act_in: ActQuant, bias: torch.Tensor | None, pre_scale: float, out: ActQuant,
                    activation: str, multiplier_bits: int = DEFAULT_MULTIPLIER_BITS,
                    pre_bits: int = 0, channel_scale: torch.Tensor | None = None) -> LayerEpilogue:
    """The epilogue of one quantized conv (a :class:`~sw.intref.contract.LayerContract` whose input codes use
    ``act_in``): ``K_c`` from its bias and weight sums, ``M_c, R_c`` for ``2^-E s_a / pre_scale``, and the
    table from ``pre_scale`` to the consumer's quantizer ``out``. ``offset_bits`` is the declared width of
    the ``K_c`` it stores (the fewest bits that hold them).

    ``channel_scale`` (float [o], each > 0): a per-channel factor between the conv and its activation, the
    scale of a BatchNorm kept separate from the quantized weights: ``pre = channel_scale_c * (conv_c + bias_c)``
    (``bias`` then includes the BatchNorm's shift divided by ``channel_scale``); each channel then gets its own
    ``M_c, R_c`` for ``channel_scale_c 2^-E s_a / pre_scale``. Without it every channel shares one."""
    if not (pre_scale > 0 and math.isfinite(pre_scale)):
        raise QuantizationError(f"{contract.name}: pre-activation scale {pre_scale} is not a positive finite number")
    acc_lsb = 2.0 ** -contract.shift * act_in.scale
    channels = contract.shape[0]
    if channel_scale is not None and not bool(((channel_scale > 0) & torch.isfinite(channel_scale)).all()):
        bad = int(torch.nonzero(~((channel_scale > 0) & torch.isfinite(channel_scale)))[0])
        raise QuantizationError(f"{contract.name}: channel {bad}'s scale {float(channel_scale[bad]):.3g} is not "
                                f"positive; an unsigned multiplier cannot hold it (fold BatchNorm into the "
                                f"weights before quantizing: --fold-bn)")
    offset = epilogue_offsets(contract, act_in, bias)
    fmt = EpilogueFormat(contract.fmt.acc_bits, signed_bits_for(int(offset.min()), int(offset.max())), out.bits,
                         pre_bits, multiplier_bits)
    reals = [acc_lsb / pre_scale] * channels if channel_scale is None else \
        [float(c) * acc_lsb / pre_scale for c in channel_scale.detach().double()]
    pairs = [multiplier_and_shift(r, fmt) for r in reals]
    return LayerEpilogue(contract.name, fmt, offset, torch.tensor([m for m, _ in pairs], dtype=torch.int64),
                         torch.tensor([r for _, r in pairs], dtype=torch.int64),
                         activation_table(activation, pre_scale, out, fmt), activation, pre_scale, out)
