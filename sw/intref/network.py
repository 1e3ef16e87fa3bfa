"""Whole-network inference in which every quantized conv follows the integer contract.

:func:`build_hardware_model` takes a :class:`~sw.quant.model.QuantizedModel` (fake-quantized deploy model and
integer records) and per-conv activation quantizers, and returns a copy of the model whose quantized convs are
:class:`IntegerConv2d`: quantize the input to A bits, accumulate exactly in integers, remove the activation
zero-point's term, then ``* 2^-E * s_a + bias`` in floating point. Convs left in FP16 by policy stay float convs (they are not
mapped to the processing element).
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from ..quant.model import QuantizedModel

from . import fused
from .contract import DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS, ActQuant, LayerContract
from .conv import ExactConv, recombine


class IntegerConv2d(nn.Module):
    """A conv computed exactly as the processing element does, plus the contract's epilogue."""

    def __init__(self, contract: LayerContract, conv: nn.Conv2d, act: ActQuant):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1] \
                or conv.padding[0] != conv.padding[1]:
            raise ValueError(f"{contract.name}: only square, ungrouped, undilated convs map to the PE")
        if act.bits != contract.fmt.act_bits:
            raise ValueError(f"{contract.name}: activation quantizer has {act.bits} bits, contract {contract.fmt.act_bits}")
        self.contract = contract
        self.act = act
        self.stride, self.padding = conv.stride[0], conv.padding[0]
        self.register_buffer("weight_int", contract.weight_int())
        # z_a * sum(W) per output channel: what the activation zero-point adds to each accumulator
        self.register_buffer("zero_point_term", act.zero_point * self.weight_int.sum((1, 2, 3)))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        # 2^-E s_a as one factor: scaling by a power of two is exact, so c * (2^-E s_a) == (c * 2^-E) * s_a
        self.out_scale = 2.0 ** -contract.shift * act.scale
        # one-element float64 tensors: an operation with a float32 tensor then computes in float64
        self.out_scale_t = torch.tensor([self.out_scale], dtype=torch.float64)
        self.act_scale = torch.tensor([act.scale], dtype=torch.float64)
        # the conv of the centred codes x - z_a, |x - z_a| <= max(z_a - qmin, qmax - z_a): planned once
        lo, hi = contract.fmt.act_range
        self.conv = ExactConv(self.weight_int, max(act.zero_point - lo, hi - act.zero_point))
        self.last_acc: torch.Tensor | None = None  # kept only when ``keep_acc`` is set (tests, co-simulation)
        self.keep_acc = False

    def accumulate(self, x: torch.Tensor) -> torch.Tensor:
        """The PE's accumulators (int64 [n, o, h, w]) for float input ``x``: padding is the code z_a."""
        return self.accumulate_codes(self.act.quantize(x))

    def accumulate_codes(self, x_int: torch.Tensor) -> torch.Tensor:
        """The PE's accumulators (int64 [n, o, h, w]) for input codes ``x_int`` (integer-valued, any dtype):
        the conv's zero padding is the code z_a. Computed as the conv of the centred codes plus ``z_a sum(W)``: the
        same integers (padding with z_a adds exactly the z_a sum(W) that the centred conv leaves out)."""
        centred = self.conv.int64(x_int.double() - self.act.zero_point, self.stride, self.padding)
        return centred + self.zero_point_term.view(1, -1, 1, 1)

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """``accumulate(x) - z_a sum(W)`` of float input ``x``, as exact integer values in a float tensor
        (:meth:`ExactConv.values`; float64 of the int64 result where the plan's bound exceeds 2^53). The codes
        are quantized straight to ``x - z_a``: ``clamp(round(x / s_a), qmin - z_a, qmax - z_a)`` is
        ``clamp(round(x / s_a) + z_a, qmin, qmax) - z_a`` (integers; adding z_a commutes with the clamp), and
        the division is float64's (a float64 operand of one element takes part in type promotion)."""
        return self._centred_values(self._quantize_centred(x))

    def _quantize_centred(self, x: torch.Tensor) -> torch.Tensor:
        """The centred codes ``x - z_a`` of float input ``x`` (see :meth:`centred`): float32 in one fused pass
        (:func:`sw.intref.fused.quantize_centred`, the same arithmetic) where the kernel runs, else float64."""
        lo, hi = self.contract.fmt.act_range
        z = self.act.zero_point
        codes = fused.quantize_centred(x, self.act.scale, lo - z, hi - z)
        return torch.div(x, self.act_scale).round_().clamp_(lo - z, hi - z) if codes is None else codes

    def _centred_values(self, x_centred: torch.Tensor) -> torch.Tensor:
        if not self.conv.exact_double:
            return self.conv.int64(x_centred, self.stride, self.padding).double()
        return self.conv.values(x_centred, self.stride, self.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's float32 output: the centred conv ``* 2^-E s_a`` in float64, rounded to float32, plus the
        bias. Where the conv is float32 digits, quantizing the input and recombining the digits with the scale
        and bias are each one compiled pass (:mod:`sw.intref.fused`, the same arithmetic)."""
        if self.keep_acc:  # the accumulators themselves, as the PE computes them
            self.last_acc = self.accumulate(x)
            centred = (self.last_acc - self.zero_point_term.view(1, -1, 1, 1)).double()
        else:
            x_centred = self._quantize_centred(x)
            digits = self.conv.float32_digits(x_centred, self.stride, self.padding)
            if digits is None:
                centred = self._centred_values(x_centred)
            else:  # recombination, scale and bias in one pass, the same arithmetic as below
                y = fused.hw_output(*digits, self.out_scale, self.bias)
                if y is not None:
                    return y
                centred = recombine(*digits)
        # (centred * 2^-E s_a) in float64, rounded to float32 on the way out: out= casts the float64 result
        y = torch.mul(centred, self.out_scale_t, out=torch.empty(centred.shape, dtype=torch.float32))
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def layer_contracts(qm: QuantizedModel, act_bits: int, scale_bits: int) -> "OrderedDict[str, LayerContract]":
    """The contract of every quantized conv (layers left in FP16 have none)."""
    return OrderedDict((name, LayerContract.from_record(name, r.qt, act_bits, scale_bits))
                       for name, r in qm.layers.items() if r.qt is not None)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def build_hardware_model(qm: QuantizedModel, act_quant: dict[str, ActQuant], act_bits: int = DEFAULT_ACT_BITS,
                         scale_bits: int = DEFAULT_SCALE_BITS, partial: bool = False):
    """(hardware-exact model, contracts): a copy of ``qm.model`` with every quantized conv made integer.
    ``partial``: only the convs in ``act_quant`` (a calibration that stopped early); the contracts are theirs."""
    model = copy.deepcopy(qm.model).eval()
    contracts = layer_contracts(qm, act_bits, scale_bits)
    if partial:
        contracts = {n: c for n, c in contracts.items() if n in act_quant}
    convs = model.conv_layers()
    for name, contract in contracts.items():
        if name not in act_quant:
            raise KeyError(f"no activation quantizer calibrated for {name}")
        _set_submodule(model, name, IntegerConv2d(contract, convs[name], act_quant[name]))
    return model, contracts
