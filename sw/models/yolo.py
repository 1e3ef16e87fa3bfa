"""A YOLO model built from the layer-list config that official checkpoints embed.

The config is the upstream ``yaml`` dict: ``nc``, ``depth_multiple``, ``width_multiple``, ``anchors`` and
``backbone`` + ``head`` rows of ``[from, number, module, args]``. Upstream ``eval``s the strings in it; here
they are parsed by a small allow-list (:func:`parse_arg`), so a config can never run code.
"""

from __future__ import annotations

import ast
import copy
import math
from collections import OrderedDict

import torch
from torch import nn

from .. import limits
from ..errors import ConfigError
from .heads import IDetect, Detect
from .layers import C3, MP, SP, SPPCSPC, SPPF, Bottleneck, Concat, Conv, RepConv

MODULES = {
    "Conv": Conv, "RepConv": RepConv, "SPPCSPC": SPPCSPC, "MP": MP, "SP": SP, "Concat": Concat,
    "nn.Upsample": nn.Upsample, "Detect": Detect, "IDetect": IDetect,
    "C3": C3, "Bottleneck": Bottleneck, "SPPF": SPPF,
}
# Modules whose first arg is an output channel count scaled by width_multiple.
_CHANNEL_MODULES = (Conv, RepConv, SPPCSPC, C3, Bottleneck, SPPF)
# Modules that take the repeat count as their third argument instead of being repeated.
_REPEAT_INSIDE = (C3, SPPCSPC)
_ACTIVATIONS = {"SiLU": nn.SiLU, "ReLU": nn.ReLU, "LeakyReLU": nn.LeakyReLU, "Identity": nn.Identity,
                "Hardswish": nn.Hardswish, "Sigmoid": nn.Sigmoid}


def make_divisible(x: float, divisor: int = 8) -> int:
    return math.ceil(x / divisor) * divisor


def parse_arg(a, names: dict):
    """Interpret one config argument without eval: names, literals and ``nn.<Activation>(literal...)``."""
    if not isinstance(a, str):
        return a
    if a in names:
        return names[a]
    if len(a) > 200:
        raise ConfigError(f"config argument of {len(a)} characters: {a[:40]!r}...")
    try:
        node = ast.parse(a, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return a  # upstream keeps unparseable strings (e.g. 'nearest') as they are
    if isinstance(node, ast.Constant):
        return node.value
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "nn"):
        cls = _ACTIVATIONS.get(node.func.attr)
        if cls is None:
            raise ConfigError(f"unsupported activation in config: {a!r}")
        try:
            args = [ast.literal_eval(x) for x in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
            return cls(*args, **kwargs)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            raise ConfigError(f"activation arguments must be literals it accepts: {a!r}") from None
    if isinstance(node, ast.Name):
        return a
    raise ConfigError(f"config argument is not a literal, a known name or an activation: {a!r}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


_is_real = limits.is_finite_number


def _check_cfg(cfg: dict) -> None:
    """The config's global values, each against its documented limit (:mod:`sw.limits`)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"model config must be a dict, got {type(cfg).__name__}")
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in cfg:
            raise ConfigError(f"model config lacks '{key}'")
    nc = cfg["nc"]
    if not _is_int(nc) or not 1 <= nc <= limits.MAX_CLASSES:
        raise ConfigError(f"nc must be an integer from 1 to {limits.MAX_CLASSES}, got {_brief(nc)}")
    for key in ("depth_multiple", "width_multiple"):
        v = cfg.get(key, 1.0)
        if not _is_real(v) or not 0 < v <= limits.MAX_MULTIPLE:
            raise ConfigError(f"{key} must be a finite number in (0, {limits.MAX_MULTIPLE:g}], got {_brief(v)}")
    _check_anchors(cfg["anchors"])
    rows = [cfg[k] for k in ("backbone", "head")]
    if not all(isinstance(r, list) for r in rows) or not 1 <= len(rows[0]) + len(rows[1]) <= limits.MAX_LAYERS:
        raise ConfigError(f"backbone and head must be lists of 1 to {limits.MAX_LAYERS} layers in all")


def _check_anchors(anchors, where: str = "anchors") -> None:
    """An anchor count, or 1 to 8 levels of the same even number of finite positive sizes."""
    if _is_int(anchors):
        if not 1 <= anchors <= limits.MAX_ANCHORS:
            raise ConfigError(f"{where} must be from 1 to {limits.MAX_ANCHORS}, got {anchors}")
    elif not (isinstance(anchors, list) and 1 <= len(anchors) <= 8
              and all(isinstance(a, list) and 2 <= len(a) <= 2 * limits.MAX_ANCHORS and len(a) % 2 == 0
                      and len(a) == len(anchors[0]) and all(_is_real(v) and v > 0 for v in a) for a in anchors)):
        raise ConfigError(f"{where} must be 1 to 8 levels of the same even number (2 to "
                          f"{2 * limits.MAX_ANCHORS}) of finite positive numbers, got {_brief(anchors)}")


def _brief(x) -> str:
    """A config value for a message, never longer than a line."""
    text = repr(x) if isinstance(x, (int, float, str, type(None))) and len(str(x)) <= 60 else None
    return text or f"<{type(x).__name__}>"


def _check_from(f, i: int) -> None:
    """Each source index must name an earlier layer (-1: the previous one, or the input at layer 0)."""
    sources = f if isinstance(f, list) else [f]
    if not sources or len(sources) > 64 or not all(_is_int(j) for j in sources) or not isinstance(f, (int, list)):
        raise ConfigError(f"layer {i}: 'from' must be an index or a list of indices, got {_brief(f)}")
    for j in sources:
        if j != -1 and not (-i <= j < 0 or 0 <= j < i):
            raise ConfigError(f"layer {i}: 'from' index {j} does not name an earlier layer")


def _check_args(m, args: list, i: int) -> None:
    """Arguments that torch would accept but that make no sense (or no end) in a detector."""
    if m in _CHANNEL_MODULES and not (args and _is_int(args[0]) and args[0] >= 1):
        raise ConfigError(f"layer {i}: {m.__name__} needs a positive integer channel count, got "
                          f"{_brief(args[0] if args else None)}")
    if m is nn.Upsample:
        size, scale = (list(args) + [None, None])[:2]
        if size is not None or not _is_real(scale) or not 0 < scale <= limits.MAX_UPSAMPLE:
            raise ConfigError(f"layer {i}: nn.Upsample takes [None, scale] with scale in (0, "
                              f"{limits.MAX_UPSAMPLE}], got {_brief(size)}, {_brief(scale)}")
    if m in (Detect, IDetect):
        if len(args) != 2 or not _is_int(args[0]) or not 1 <= args[0] <= limits.MAX_CLASSES:
            raise ConfigError(f"layer {i}: {m.__name__} takes [nc, anchors] with nc from 1 to "
                              f"{limits.MAX_CLASSES}, got {_brief(args[0] if args else None)}")
        _check_anchors(args[1], f"layer {i}: {m.__name__} anchors")
    if m is Concat and args not in ([], [1]):
        raise ConfigError(f"layer {i}: Concat joins channels (dimension 1), got {_brief(args[0])}")


def parse_model(cfg: dict, ch: int = 3):
    """Build the layer list from a config; returns (nn.Sequential, save indices)."""
    _check_cfg(cfg)
    anchors, nc = cfg["anchors"], cfg["nc"]
    gd, gw = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0)
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    names = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
    rows = list(cfg["backbone"]) + list(cfg["head"])
    layers, save, chs, blocks = [], [], [ch], 0
    for i, row in enumerate(rows):
        try:
            f, n, mname, args = row
        except (TypeError, ValueError):
            raise ConfigError(f"layer {i}: row must be [from, number, module, args], got {row!r}") from None
        m = MODULES.get(mname) if isinstance(mname, str) else None
        if m is None:
            raise ConfigError(f"layer {i}: unsupported module {_brief(mname)} (supported: {', '.join(MODULES)})")
        _check_from(f, i)
        if not _is_int(n) or not 1 <= n <= limits.MAX_REPEATS:
            raise ConfigError(f"layer {i}: number must be an integer from 1 to {limits.MAX_REPEATS}, got {_brief(n)}")
        if not isinstance(args, list) or len(args) > 16:
            raise ConfigError(f"layer {i}: args must be a list of at most 16 values, got {_brief(args)}")
        args = [parse_arg(a, names) for a in copy.deepcopy(args)]
        n = max(round(n * gd), 1) if n > 1 else n
        blocks += n
        if n > limits.MAX_REPEATS or blocks > limits.MAX_BLOCKS:
            raise ConfigError(f"layer {i}: {n} repeats after depth_multiple ({blocks} blocks so far); at most "
                              f"{limits.MAX_REPEATS} per layer and {limits.MAX_BLOCKS} in all")
        _check_args(m, args, i)
        try:
            if m in _CHANNEL_MODULES:
                c1, c2 = chs[f], args[0]
                if c2 != no:
                    c2 = make_divisible(c2 * gw, 8)
                if not 1 <= c2 <= limits.MAX_CHANNELS:
                    raise ConfigError(f"layer {i}: {c2} output channels, more than {limits.MAX_CHANNELS}")
                args = [c1, c2, *args[1:]]
                if m in _REPEAT_INSIDE:
                    args.insert(2, n)
                    n = 1
            elif m is Concat:
                c2 = sum(chs[x] for x in f)
            elif m in (Detect, IDetect):
                args.append([chs[x] for x in f])
                if isinstance(args[1], int):
                    args[1] = [list(range(args[1] * 2))] * len(f)
                c2 = None
            else:
                c2 = chs[f]
            module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        except (IndexError, TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError, RuntimeError) as e:
            raise ConfigError(f"layer {i} ({mname}, from {f!r}): {type(e).__name__}: {str(e)[:120]}") from None
        module.i, module.f = i, f
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


def _run(layers: nn.Sequential, save: list[int], x, check=None):
    """The forward pass through a layer list; ``check(i, module, output)`` sees each layer's output."""
    y = []
    for m in layers:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        if check is not None:
            check(m.i, m, x)
        y.append(x if m.i in save else None)
    return x


def _plan(cfg: dict, ch: int) -> torch.Tensor:
    """Build and run the config on the meta device (no memory, no arithmetic): refuse it if its weights or a
    layer's output exceed the limits or a layer cannot run, before anything real is allocated. Returns the
    head's strides, measured on a 256 x 256 input."""
    with torch.device("meta"):
        layers, save = parse_model(cfg, ch)
    head = layers[-1]
    if not isinstance(head, Detect):
        raise ConfigError("the last layer of a YOLO config must be Detect or IDetect")
    size = sum(t.numel() for t in layers.parameters()) + sum(t.numel() for t in layers.buffers())
    if size > limits.MAX_PARAMETERS:
        raise ConfigError(f"the config makes {size} parameters, more than {limits.MAX_PARAMETERS}")
    sizes = []

    def check(i, m, out):
        if m is head:
            return
        outs = out if isinstance(out, (list, tuple)) else [out]
        if any(not isinstance(o, torch.Tensor) or o.numel() > limits.MAX_ACTIVATION for o in outs):
            raise ConfigError(f"layer {i} ({type(m).__name__}): output larger than {limits.MAX_ACTIVATION} "
                              "elements for a 256 x 256 input")

    hook = head.register_forward_pre_hook(lambda m, inp: sizes.extend(t.shape[-1] for t in inp[0]))
    current = [None]
    try:
        with torch.no_grad():
            _run(layers, save, torch.zeros(1, ch, 256, 256, device="meta"),
                 lambda i, m, out: (current.__setitem__(0, i), check(i, m, out)))
    except ConfigError:
        raise
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError, OverflowError) as e:
        where = 0 if current[0] is None else current[0] + 1
        raise ConfigError(f"layer {where}: cannot run ({type(e).__name__}: {str(e)[:120]})") from None
    finally:
        hook.remove()
    if not sizes or len(sizes) != head.nl or not all(s > 0 for s in sizes):
        raise ConfigError(f"the head gets {len(sizes)} feature maps for {head.nl} anchor levels")
    return torch.tensor([256 / s for s in sizes], dtype=torch.float32)


class YoloModel(nn.Module):
    """A YOLOv5/YOLOv7 detector. ``forward`` returns decoded predictions ``[bs, anchors, 5 + nc]``."""

    def __init__(self, cfg: dict, ch: int = 3, names: list[str] | None = None, init_biases: bool = True):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        strides = _plan(self.yaml, ch)
        self.model, self.save = parse_model(self.yaml, ch)
        self.nc = self.yaml["nc"]
        self.names = list(names) if names else [str(i) for i in range(self.nc)]
        head = self.detect
        head.stride.copy_(strides)
        head.anchors /= strides.view(-1, 1, 1)
        if init_biases:
            self._initialize_biases()

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def _initialize_biases(self) -> None:
        # Upstream's prior: ~8 objects per 640 image, uniform classes; gives realistic scores to generated weights.
        head = self.detect
        for conv, s in zip(head.m, head.stride):
            b = conv.bias.view(head.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (head.nc - 0.99))

    def forward(self, x):
        return _run(self.model, self.save, x)

    def conv_layers(self) -> "OrderedDict[str, nn.Conv2d]":
        """Every Conv2d of the model, keyed by its official state_dict prefix (e.g. ``model.0.conv``)."""
        return OrderedDict((name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d))
