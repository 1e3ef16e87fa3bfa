"""The quantizers' names and ranges, without importing torch, so the command line can offer them as choices
in milliseconds. Each is defined here once; the modules that implement them import it from here."""

from __future__ import annotations

METHODS = ("affine", "symmetric", "symmetric-full", "pwlq")
MIN_BITS, MAX_BITS = 2, 8

# Granularity: the axes of W[o, c, h, w] that index a group (see sw.quant.granularity).
GROUP_AXES: dict[str, tuple[int, ...]] = {
    "layer": (),
    "filter": (0,),
    "channel": (0, 1),
    "fshape": (1, 2, 3),
    "cshape": (0, 2, 3),
}
SINGLE = tuple(GROUP_AXES)
MIXES = {"mix4": ("filter", "channel", "fshape", "cshape"), "mix3": ("filter", "fshape", "cshape")}

CHANNEL_1X1 = ("fp16", "quantize")   # channel-wise on 1x1 convs: leave in FP16 (the paper) or quantize anyway
ROUNDINGS = ("nearest", "gptq")       # how codes are chosen on the grid: nearest level, or GPTQ error feedback
DEFAULT_CALIB_IMAGES = 32             # coco128 images whose conv inputs drive GPTQ, bias correction and budgets
