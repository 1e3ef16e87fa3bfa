"""Per-layer SQNR of the hardware-exact network's conv outputs against the fake-quantized network's."""

from __future__ import annotations

import math

import torch

from .network import IntegerConv2d


def _sqnr(signal_power: float, noise_power: float) -> float:
    if noise_power == 0:
        return math.inf
    return 10 * math.log10(signal_power / noise_power) if signal_power > 0 else -math.inf


@torch.no_grad()
def activation_sqnr(sw_model, hw_model, images: torch.Tensor) -> dict[str, dict]:
    """For each integer conv: ``network_sqnr_db`` (both networks run end to end on ``images``) and
    ``layer_sqnr_db`` (the integer conv fed the fake-quant network's own input: this layer's error alone)."""
    hw_modules = {n: m for n, m in hw_model.named_modules() if isinstance(m, IntegerConv2d)}
    sw_modules = dict(sw_model.named_modules())
    sw_out, hw_out, local = {}, {}, {}

    def sw_hook(name):
        def record(module, inputs, output):
            sw_out[name] = output.double()
            local[name] = hw_modules[name](inputs[0]).double()
        return record

    def hw_hook(name):
        def record(module, inputs, output):
            hw_out[name] = output.double()
        return record

    handles = [sw_modules[n].register_forward_hook(sw_hook(n)) for n in hw_modules]
    handles += [m.register_forward_hook(hw_hook(n)) for n, m in hw_modules.items()]
    try:
        sw_model(images)
        hw_model(images)
    finally:
        for h in handles:
            h.remove()
    result = {}
    for n in hw_modules:
        power = float(sw_out[n].square().sum())
        result[n] = {"network_sqnr_db": _sqnr(power, float((hw_out[n] - sw_out[n]).square().sum())),
                     "layer_sqnr_db": _sqnr(power, float((local[n] - sw_out[n]).square().sum()))}
    return result


@torch.no_grad()
def integer_sqnr(net, images: torch.Tensor) -> dict[str, dict]:
    """For each conv of the integer network (:class:`~sw.intref.intnet.IntegerNetwork`), its output tensor
    (dequantized codes; a Detect conv's dequantized values) against the fake-quantized network's, in dB:

    - ``int_network_sqnr_db``: both networks run end to end on ``images``;
    - ``int_layer_sqnr_db``: this layer alone, fed the fake-quant network's own input (quantized to the
      layer's input codes): its PE, integer epilogue and output codes;
    - ``hw_act_layer_sqnr_db``: the same layer with today's float epilogue (the MAC-exact model's: the same
      accumulators, then ``* 2^-E s_a + bias``, BatchNorm and activation in float), after the activation;
    - ``epilogue_cost_db``: ``hw_act_layer - int_layer``, what the integer epilogue and the output codes cost.
    """
    sw: dict[str, torch.Tensor] = {}
    net.graph.run_float(images, lambda kind, key, x: sw.__setitem__(key, x) if kind != "pre" else None)
    ints = net.tensors(images)
    result = {}
    for name, layer in net.layers.items():
        node = layer.node
        ref = sw[node.dst].double()
        power = float(ref.square().sum())
        codes_in = layer.act_in.quantize(sw[node.src]).to(torch.int64)
        if layer.float_island:  # no PE: the float island is both models' layer
            local = _value(layer, layer.run_float_island(codes_in))
            hw_local = local
        else:
            local = _value(layer, layer.finish(layer.accumulate(codes_in)))
            pre = layer.pe(sw[node.src])
            pre = pre if node.bn is None else node.bn(pre)
            hw_local = (pre if layer.head is not None else node.act(pre)).double()
        errors = {key: _sqnr(power, float((value - ref).square().sum())) for key, value in [
            ("int_network_sqnr_db", _value(layer, ints[node.dst])), ("int_layer_sqnr_db", local),
            ("hw_act_layer_sqnr_db", hw_local)]}
        errors["epilogue_cost_db"] = errors["hw_act_layer_sqnr_db"] - errors["int_layer_sqnr_db"]
        result[name] = errors
    return result


def _value(layer, out: torch.Tensor) -> torch.Tensor:
    """What a layer's output is worth: dequantized codes, or a Detect conv's values as they are."""
    return out.double() if layer.head is not None else layer.out.dequantize(out)
