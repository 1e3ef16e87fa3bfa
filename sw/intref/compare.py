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
