"""Memory accounting: what every quantized layer really stores, against an FP16 baseline.

The baseline is 16 bits for every conv weight considered (all convs of the model, Detect convs included).
Against it a quantized layer stores:

- codes: k bits per weight;
- PWLQ region bits: 1 bit per weight;
- per group and region: the scale as an F-bit unsigned mantissa (F = 16 by default, the integer contract's
  scale width) and, where the method has one, the integer zero-point at its declared width (k bits for
  affine; PWLQ's tail zero-point at the signed width its layer needs, see :func:`signed_width`);
- per layer: the scale's shift exponent (8 bits);
- weights left in FP16 by policy (e.g. channel-wise 1x1 convs, as in the paper): 16 bits each.

Two figures compare the totals with the baseline:

- ``saving_paper``: codes at k bits (no region bit) plus parameters, as the paper evidently counted;
- ``saving_storage``: everything that must really be stored, PWLQ's region bit included.

BatchNorm and biases are never quantized and appear in neither side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .record import QuantizedTensor

FP16_BITS = 16
SHIFT_BITS = 8
DEFAULT_SCALE_BITS = 16


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
    if qt.method == "pwlq":
        return [0, signed_width(qt.zero_point[:, 1])]
    return [0]


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
    per_group = sum(scale_bits + zw for zw in zero_point_widths(qt))
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
