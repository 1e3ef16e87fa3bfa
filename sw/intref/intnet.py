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
from .calibrate import TensorCalibration
from .contract import DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS, ActQuant, LayerContract
from .epilogue import DEFAULT_MULTIPLIER_BITS, LayerEpilogue, derive_epilogue, epilogue_offsets
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

    @property
    def float_island(self) -> bool:
        return self.pe is None

    def accumulate(self, codes: torch.Tensor) -> torch.Tensor:
        return self.pe.accumulate_codes(codes)

    def finish(self, acc: torch.Tensor) -> torch.Tensor:
        """Output codes (int64), or a head's dequantized values (float64)."""
        return self.head.values(acc) if self.head is not None else self.epilogue.apply(acc)

    def run_float_island(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.act_in.dequantize(codes).float()
        y = self.node.pre_float(x)
        if self.head is not None or self.out is None:
            return y.double()
        return self.out.quantize(self.node.act(y)).to(torch.int64)


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
            if node.head is not None:
                layer.head = HeadDequant(torch.zeros(node.conv.out_channels, dtype=torch.int64),
                                         torch.ones(node.conv.out_channels, dtype=torch.float64))
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
            self.layers[node.name] = layer

    # ---- running -----------------------------------------------------------------------------------------
    def _run(self, x: torch.Tensor, on_conv=None, until: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Execute the graph on float images ``x``; ``on_conv(layer, codes_in, acc, out)`` sees each conv.
        Returns the tensors (codes; head outputs as float64 values). With ``until``, stop once those convs ran."""
        env = {INPUT: self.quant[INPUT].quantize(x).to(torch.int64)}
        pending = set(until) if until else None
        for node in self.graph.nodes:
            if isinstance(node, ConvNode):
                layer = self.layers.get(node.name)
                if layer is None:
                    raise QuantizationError(f"{node.name}: not calibrated (a partial calibration stopped before it)")
                if layer.float_island:
                    acc, out = None, layer.run_float_island(env[node.src])
                else:
                    acc = layer.accumulate(env[node.src])
                    out = layer.finish(acc)
                if on_conv is not None:
                    on_conv(layer, env[node.src], acc, out)
                if pending is not None:
                    pending.discard(node.name)
            elif isinstance(node, AddNode):
                out = self.adds[node.dst].apply(*(env[s] for s in node.srcs))
            elif isinstance(node, ConcatNode):
                out = torch.cat([env[s] for s in node.srcs], 1)
            else:  # max pool, upsample: on codes (float64 holds them exactly; max_pool2d has no int64 kernel)
                out = node.apply(env[node.src].double()).to(torch.int64)
            env[node.dst] = out
            if pending is not None and not pending:
                break
        return env

    def tensors(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every tensor of the network on images ``x``: int64 codes by tensor id, head outputs as float64."""
        return self._run(x)

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
            head = layer.head is not None
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
