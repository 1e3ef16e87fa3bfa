"""The integer-only network: every tensor between layers is a code tensor, every layer integer arithmetic.

:class:`IntegerNetwork` runs a quantized YOLO model (:class:`~sw.quant.model.QuantizedModel`) on the graph of
:mod:`sw.intref.graph`, with one activation quantizer per tensor class (:func:`~sw.intref.calibrate.
calibrate_tensors`, coco128). Per operation:

- **image**: quantized once by its own quantizer (spanning [0, 1]: exact for 8-bit pixels at A = 8);
- **quantized conv**: the PE's exact int64 accumulators (:meth:`IntegerConv2d.accumulate_codes`: the conv's
  zero padding is the input's zero-point code), then the integer epilogue (:func:`~sw.intref.epilogue.
  derive_epilogue`, its pre-activation step calibrated) straight into the consumer tensor's codes. A
  BatchNorm kept separate from the quantized weights (the paper's default) becomes the epilogue's
  per-channel multiplier ``M_c`` and offset; a channel whose BatchNorm scale is not positive is refused
  (``--fold-bn`` puts its sign into the weights instead);
- **concat**: its inputs already share its quantizer (each producer's epilogue targets it), so it is a plain
  concatenation of codes;
- **max pool, nearest upsample**: on codes, exact (quantization is monotonic);
- **residual add**: :class:`~sw.intref.residual.ResidualAdd`, fixed-point, into the sum's quantizer;
- **Detect convs**: the only dequantization in the network, :meth:`HeadDequant.values`
  ``(acc + K_c) * 2^-E s_a`` (times the BatchNorm scale if any), float64, for box decoding;
- **convs left in FP16 by the quantizer policy** (e.g. channel-wise 1x1s): a float island, named as such
  (:attr:`IntLayer.float_island`): the input codes are dequantized, the conv block runs in float with its
  FP16 weights, and the result is quantized to the consumer's codes. They have no PE and no trace.

:meth:`IntegerNetwork.trace` exposes, per quantized conv, what the feature-map co-simulation compares:
:class:`LayerTrace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import QuantizationError
from ..quant.model import QuantizedModel
from . import fused
from .calibrate import TensorCalibration
from .contract import DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS, ActQuant, LayerContract
from .epilogue import DEFAULT_MULTIPLIER_BITS, FloatEpilogue, LayerEpilogue, derive_epilogue, epilogue_offsets
from .conv import recombine
from .graph import INPUT, AddNode, ConcatNode, ConvNode, Graph
from .network import IntegerConv2d, layer_contracts
from .residual import ResidualAdd


@dataclass
class HeadDequant:
    """A Detect conv's output: not requantized but dequantized, ``(acc + offset_c) * scale_c`` (float64)."""

    offset: torch.Tensor   # int64 [o]: K_c, as the epilogue's step 1
    scale: torch.Tensor    # float64 [o]: 2^-E s_a (times a BatchNorm scale)

    def values(self, acc: torch.Tensor) -> torch.Tensor:
        return (acc + self.offset.view(1, -1, 1, 1)).double() * self.scale.view(1, -1, 1, 1)


@dataclass
class IntLayer:
    """One conv of the integer network: ``pe`` (accumulators) with ``epilogue`` (codes out) or ``head``
    (Detect: dequantized); or a float island (left in FP16: ``pe`` is None)."""

    node: ConvNode
    act_in: ActQuant
    out: ActQuant | None
    contract: LayerContract | None = None
    pe: IntegerConv2d | None = None
    epilogue: LayerEpilogue | None = None
    head: HeadDequant | None = None
    fast: FloatEpilogue | None = None          # the epilogue in float64, to the bit (None: int64 only)
    head_offset: torch.Tensor | None = None    # float64 [1, o, 1, 1]: a head's K_c + z_a sum(W)

    def plan_fast(self) -> None:
        """Derive :attr:`fast` and :attr:`head_offset` (once ``pe`` and ``epilogue`` or ``head`` are set)."""
        if self.head is not None:
            self.head_offset = (self.head.offset + self.pe.zero_point_term).double().view(1, -1, 1, 1)
        elif self.epilogue is not None:
            bound = self.pe.weight_int.abs().sum((1, 2, 3)) * self.pe.conv.act_max  # |centred conv| per channel
            self.fast = FloatEpilogue.of(self.epilogue, self.pe.zero_point_term, bound)

    @property
    def float_island(self) -> bool:
        return self.pe is None

    @property
    def is_head(self) -> bool:
        """A Detect conv: its output is dequantized (``head``), not requantized."""
        return self.node.head is not None

    def accumulate(self, codes: torch.Tensor) -> torch.Tensor:
        return self.pe.accumulate_codes(codes)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        """Output codes (int64), or a head's dequantized values (float64)."""
        return self.head.values(acc) if self.is_head else self.epilogue.apply(acc)

    def run_float_island(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (float32), or a head's values (float64)."""
        x = self.act_in.dequantize(codes).float()
        y = self.node.pre_float(x)
        if self.is_head:
            return y.double()
        return self.out.quantize(self.node.act(y)).float()

    def run(self, codes: torch.Tensor) -> torch.Tensor:
        """This conv's output codes (float32) from input codes held in a float32 tensor, or a head's values
        (float64): equal to :meth:`finish` of :meth:`accumulate`, without int64 tensors. The conv of the
        centred codes ``x - z_a`` (float32, exact: |x - z_a| < 2^A) is ``acc - z_a sum(W)``, exact
        (:class:`~sw.intref.conv.ExactConv`); the epilogue takes it in float64 (:class:`FloatEpilogue`); a
        head adds ``K_c + z_a sum(W)`` (integers: the sum is the int64 one's, rounded to float64 as
        :meth:`HeadDequant.values` rounds it) and scales; where the conv is float32 digits, recombining them and
        the epilogue or the head's dequantization are one compiled pass (:mod:`sw.intref.fused`, the same
        arithmetic). Layers whose bounds do not allow it take the int64 path."""
        if self.float_island:
            return self.run_float_island(codes)
        pe = self.pe
        if pe.conv.exact_double and (self.head_offset is not None or self.fast is not None):
            centred = codes - pe.act.zero_point
            digits = pe.conv.float32_digits(centred, pe.stride, pe.padding)
            if digits is None:
                values = pe.conv.values(centred, pe.stride, pe.padding)
            else:  # recombination and epilogue in one pass, the same arithmetic as below
                out = fused.head_output(*digits, self.head_offset, self.head.scale) if self.head_offset is not None \
                    else fused.codes_output(*digits, self.fast)
                if out is not None:
                    return out
                values = recombine(*digits)
            if self.head_offset is not None:
                return (values + self.head_offset) * self.head.scale.view(1, -1, 1, 1)
            return self.fast.apply(values)
        out = self.finish(self.accumulate(codes))
        return out if self.is_head else out.float()


@dataclass
class LayerTrace:
    """One quantized conv's integer data on one input, for co-simulating a whole feature map.

    - ``contract``: the layer's :class:`~sw.intref.contract.LayerContract` (weights, widths);
    - ``input``: int64 [n, c, h, w] input codes, unpadded; the conv pads ``padding`` on each side with the
      code ``input_quant.zero_point`` (the value 0.0) and strides by ``stride``;
    - ``acc``: int64 [n, o, oh, ow], the PE's exact accumulators;
    - ``epilogue``: its :class:`~sw.intref.epilogue.LayerEpilogue` (None for a Detect conv);
    - ``output``: int64 output codes, ``epilogue.apply(acc)``, in the consumer tensor's quantizer
      (``epilogue.out``); for a Detect conv None, and ``head`` holds its dequantization instead.
    """

    name: str
    contract: LayerContract
    input: torch.Tensor = field(repr=False)
    input_quant: ActQuant
    stride: int
    padding: int
    acc: torch.Tensor = field(repr=False)
    epilogue: LayerEpilogue | None
    output: torch.Tensor | None = field(repr=False)
    head: HeadDequant | None = None


class IntegerNetwork(nn.Module):
    """The integer-only network of a quantized model and a (whole or partial) tensor calibration.

    ``forward(images)`` (float [n, 3, h, w] in [0, 1]) returns decoded predictions like the float model, so
    it evaluates like one; it needs a whole-network calibration. :meth:`trace` needs only the layers asked
    for and those before them.
    """

    def __init__(self, qm: QuantizedModel, calibration: TensorCalibration, act_bits: int = DEFAULT_ACT_BITS,
                 scale_bits: int = DEFAULT_SCALE_BITS, multiplier_bits: int = DEFAULT_MULTIPLIER_BITS,
                 pre_bits: int = 0):
        super().__init__()
        self.graph: Graph = calibration.graph
        self.quant = calibration.tensors
        self.act_bits = act_bits
        contracts = layer_contracts(qm, act_bits, scale_bits)
        self.layers: dict[str, IntLayer] = {}
        self.adds: dict[str, ResidualAdd] = {}
        for node in self.graph.nodes:
            if isinstance(node, AddNode) and node.dst in self.quant and all(s in self.quant for s in node.srcs):
                self.adds[node.dst] = ResidualAdd.derive(node.dst, tuple(self.quant[s] for s in node.srcs),
                                                         self.quant[node.dst], multiplier_bits)
            if not isinstance(node, ConvNode) or not calibration.complete(node):
                continue
            if node.name not in qm.layers:
                raise QuantizationError(f"{node.name}: not a layer of the quantized model")
            layer = IntLayer(node, self.quant[node.src], self.quant.get(node.dst))
            contract = contracts.get(node.name)
            channel_scale, bias = node.channel_scale_and_bias()
            if contract is not None:
                layer.contract = contract
                layer.pe = IntegerConv2d(contract, node.conv, layer.act_in)
                if node.head is not None:
                    lsb = 2.0 ** -contract.shift * layer.act_in.scale
                    layer.head = HeadDequant(epilogue_offsets(contract, layer.act_in, bias),
                                             lsb * (torch.ones(contract.shape[0], dtype=torch.float64)
                                                    if channel_scale is None else channel_scale))
                else:
                    layer.epilogue = derive_epilogue(contract, layer.act_in, bias,
                                                     calibration.pre_scales[node.name], layer.out,
                                                     node.activation, multiplier_bits, pre_bits, channel_scale)
                layer.plan_fast()
            self.layers[node.name] = layer

    # ---- running -----------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, on_conv=None, until: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Execute the graph on float images ``x``. Codes travel in float32 tensors (integers below 2^A:
        exact; concat, max pool and nearest upsample only move them), head outputs as float64 values. Each conv
        runs :meth:`IntLayer.run`; with ``on_conv(layer, codes_in, acc, out)`` it runs the int64 definition
        instead (:meth:`IntLayer.accumulate`, :meth:`IntLayer.finish`) and shows the callback int64 codes and
        accumulators. With ``until``, stop once those convs ran."""
        env = {INPUT: self.quant[INPUT].quantize(x).float()}
        pending = set(until) if until else None
        for node in self.graph.nodes:
            if isinstance(node, ConvNode):
                layer = self.layers.get(node.name)
                if layer is None:
                    raise QuantizationError(f"{node.name}: not calibrated (a partial calibration stopped before it)")
                if on_conv is None:
                    out = layer.run(env[node.src])
                else:
                    codes = env[node.src].to(torch.int64)
                    if layer.float_island:
                        acc, out = None, layer.run_float_island(codes)
                    else:
                        acc = layer.accumulate(codes)
                        out = layer.finish(acc)
                    on_conv(layer, codes, acc, out)
                    out = out if layer.is_head or layer.float_island else out.float()
                if pending is not None:
                    pending.discard(node.name)
            elif isinstance(node, AddNode):
                out = self.adds[node.dst].apply_float(*(env[s] for s in node.srcs))
            elif isinstance(node, ConcatNode):
                out = torch.cat([env[s] for s in node.srcs], 1)
            else:  # max pool, upsample: on codes
                out = node.apply(env[node.src])
            env[node.dst] = out
            if pending is not None and not pending:
                break
        return env

    def tensors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor of the network on images ``x``: int64 codes by tensor id, head outputs as float64."""
        heads = set(self.graph.heads)
        return {t: v if t in heads else v.to(torch.int64) for t, v in self._run(x).items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env = self._run(x)
        return self.graph.detect.decode([env[h].float() for h in self.graph.heads])

    @torch.no_grad()
    def trace(self, images: torch.Tensor, layers: list[str] | None = None) -> dict[str, LayerTrace]:
        """Per quantized conv (all, or those named in ``layers``; FP16 islands have none) its
        :class:`LayerTrace` on float images ``images`` ([n, 3, h, w] in [0, 1]). Stops after the last one
        asked for, so a partial calibration up to them suffices."""
        convs = self.graph.convs
        if layers is not None:
            unknown = [n for n in layers if n not in convs]
            if unknown:
                raise QuantizationError(f"no conv {unknown[0]!r} in the model")
            islands = [n for n in layers if n in self.layers and self.layers[n].float_island]
            if islands:
                raise QuantizationError(f"{islands[0]} was left in FP16; it has no PE and no trace")
        wanted = set(layers) if layers is not None else None
        traces: dict[str, LayerTrace] = {}

        def record(layer: IntLayer, codes, acc, out):
            if layer.float_island or (wanted is not None and layer.node.name not in wanted):
                return
            head = layer.is_head
            traces[layer.node.name] = LayerTrace(layer.node.name, layer.contract, codes, layer.act_in,
                                                 layer.pe.stride, layer.pe.padding, acc, layer.epilogue,
                                                 None if head else out, layer.head)

        self._run(images, record, wanted)
        return traces


def integer_network(qm: QuantizedModel, calib_dir, act_bits: int = DEFAULT_ACT_BITS,
                    scale_bits: int = DEFAULT_SCALE_BITS, calib_images: int = 32, progress: bool = True,
                    upto: list[str] | None = None, calibration: TensorCalibration | None = None,
                    **calib_kwargs) -> IntegerNetwork:
    """Calibrate (as far as ``upto``, or the whole network) and build the integer network of ``qm``."""
    from .calibrate import calibrate_tensors

    if calibration is None:
        calibration = calibrate_tensors(qm.model, calib_dir, act_bits, calib_images, progress=progress,
                                        stop_after=upto, **calib_kwargs)
    return IntegerNetwork(qm, calibration, act_bits, scale_bits)
