"""Memory accounting: what every quantized layer really stores, against an FP16 baseline.

The baseline is 16 bits for every conv weight considered (all convs of the model, Detect convs included).
Against it a quantized layer stores:

- codes: k bits per weight;
- PWLQ region bits: 1 bit per weight;
- per group and region: the scale as an F-bit unsigned mantissa (F = 16 by default, the integer contract's
  scale width) and, where the method has one, the integer zero-point at its declared width (k bits for
  affine);
- PWLQ, per group: the breakpoint p, stored as the integer P = round(p 2^E) at the scales' shift E, at the
  unsigned width its layer needs (:func:`breakpoint_width`; up to about F + k - 1 bits, since p is ~2^(k-1)
  centre steps);
- per layer: the scale's shift exponent (8 bits);
- weights left in FP16 by policy (e.g. channel-wise 1x1 convs, as in the paper): 16 bits each.

Two figures compare the totals with the baseline:

- ``saving_paper``: codes at k bits (no region bit) plus parameters, as the paper evidently counted;
- ``saving_storage``: everything that must really be stored, PWLQ's region bit included.

BatchNorm and biases are never quantized and appear in neither side.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..errors import QuantizationError
from ..intref.bounds import DEFAULT_SCALE_BITS, SCALE_RANGE  # noqa: F401 (DEFAULT_SCALE_BITS re-exported)
from .record import QuantizedTensor

FP16_BITS = 16
SHIFT_BITS = 8


def signed_width(values: torch.Tensor) -> int:
    """Fewest bits of a two's-complement integer that holds every value (at least 1)."""
    if values.numel() == 0:
        return 1
    lo, hi = int(values.min()), int(values.max())
    bits = 1
    while not (-(1 << (bits - 1)) <= lo and hi <= (1 << (bits - 1)) - 1):
        bits += 1
    return bits


def zero_point_widths(qt: QuantizedTensor) -> list[int]:
    """Declared storage width of the zero-point of each region (0 where the method has none)."""
    if qt.method == "affine":
        return [qt.bits]
    return [0] * qt.regions


def scale_shift(scales: torch.Tensor, scale_bits: int) -> int:
    """Largest E such that round(s * 2^E) fits an unsigned ``scale_bits`` mantissa for every scale s."""
    s_max = float(scales.max())
    if not (SCALE_RANGE[0] <= s_max <= SCALE_RANGE[1]):  # NaN fails too
        raise QuantizationError(f"scales must be finite, from 2^-64 to 2^64; the largest is {s_max}")
    e = scale_bits - math.floor(math.log2(s_max)) - 1
    while round(s_max * 2.0 ** (e + 1)) <= (1 << scale_bits) - 1:  # float log2 may be off by one
        e += 1
    while round(s_max * 2.0 ** e) > (1 << scale_bits) - 1:
        e -= 1
    return e


def breakpoint_ints(qt: QuantizedTensor, scale_bits: int) -> torch.Tensor | None:
    """PWLQ's per-group breakpoints in the scale domain, P = round(p 2^E) (int64 [G]); None for other methods."""
    if qt.breakpoint is None:
        return None
    e = scale_shift(qt.scale, scale_bits)
    return torch.round(qt.breakpoint[:, 0] * 2.0 ** e).to(torch.int64)


def breakpoint_width(qt: QuantizedTensor, scale_bits: int) -> int:
    """Declared unsigned width of the stored breakpoints P of a PWLQ layer (0 for other methods)."""
    ints = breakpoint_ints(qt, scale_bits)
    return 0 if ints is None else max(1, int(ints.max()).bit_length())


@dataclass
class LayerStorage:
    weights: int
    baseline_bits: int
    code_bits: int
    region_bits: int
    param_bits: int
    fp16_bits: int

    @property
    def paper_bits(self) -> int:
        return self.code_bits + self.param_bits + self.fp16_bits

    @property
    def storage_bits(self) -> int:
        return self.code_bits + self.region_bits + self.param_bits + self.fp16_bits

    def as_dict(self) -> dict:
        return {**asdict(self), "paper_bits": self.paper_bits, "storage_bits": self.storage_bits}


def quantized_storage(qt: QuantizedTensor, scale_bits: int = DEFAULT_SCALE_BITS) -> LayerStorage:
    n = qt.numel
    per_group = sum(scale_bits + zw for zw in zero_point_widths(qt)) + breakpoint_width(qt, scale_bits)
    return LayerStorage(weights=n, baseline_bits=FP16_BITS * n, code_bits=qt.bits * n,
                        region_bits=n if qt.region is not None else 0,
                        param_bits=qt.num_groups * per_group + SHIFT_BITS, fp16_bits=0)


def fp16_storage(numel: int) -> LayerStorage:
    return LayerStorage(numel, FP16_BITS * numel, 0, 0, 0, FP16_BITS * numel)


def savings(layers: list[LayerStorage]) -> dict:
    """Totals and the two saving figures over a model's layers."""
    base = sum(s.baseline_bits for s in layers)
    paper = sum(s.paper_bits for s in layers)
    storage = sum(s.storage_bits for s in layers)
    return {"baseline_bits": base, "paper_bits": paper, "storage_bits": storage,
            "saving_paper": base / paper if paper else float("inf"),
            "saving_storage": base / storage if storage else float("inf")}
