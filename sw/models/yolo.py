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
    try:
        node = ast.parse(a, mode="eval").body
    except SyntaxError:
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
        except ValueError as e:
            raise ConfigError(f"activation arguments must be literals: {a!r}") from e
        return cls(*args, **kwargs)
    if isinstance(node, ast.Name):
        return a
    raise ConfigError(f"config argument is not a literal, a known name or an activation: {a!r}")


def _check_cfg(cfg: dict) -> None:
    if not isinstance(cfg, dict):
        raise ConfigError(f"model config must be a dict, got {type(cfg).__name__}")
    for key in ("nc", "anchors", "backbone", "head"):
        if key not in cfg:
            raise ConfigError(f"model config lacks '{key}'")


def parse_model(cfg: dict, ch: int = 3):
    """Build the layer list from a config; returns (nn.Sequential, save indices)."""
    _check_cfg(cfg)
    anchors, nc = cfg["anchors"], cfg["nc"]
    gd, gw = cfg.get("depth_multiple", 1.0), cfg.get("width_multiple", 1.0)
    na = (len(anchors[0]) // 2) if isinstance(anchors, list) else anchors
    no = na * (nc + 5)
    names = {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}
    rows = list(cfg["backbone"]) + list(cfg["head"])
    layers, save, chs = [], [], [ch]
    for i, row in enumerate(rows):
        try:
            f, n, mname, args = row
        except (TypeError, ValueError):
            raise ConfigError(f"layer {i}: row must be [from, number, module, args], got {row!r}") from None
        m = MODULES.get(mname)
        if m is None:
            raise ConfigError(f"layer {i}: unsupported module {mname!r} (supported: {', '.join(MODULES)})")
        args = [parse_arg(a, names) for a in copy.deepcopy(args)]
        n = max(round(n * gd), 1) if n > 1 else n
        try:
            if m in _CHANNEL_MODULES:
                c1, c2 = chs[f], args[0]
                if c2 != no:
                    c2 = make_divisible(c2 * gw, 8)
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
        except (IndexError, TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"layer {i} ({mname} {args!r}, from {f!r}): {e}") from e
        module.i, module.f = i, f
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


class YoloModel(nn.Module):
    """A YOLOv5/YOLOv7 detector. ``forward`` returns decoded predictions ``[bs, anchors, 5 + nc]``."""

    def __init__(self, cfg: dict, ch: int = 3, names: list[str] | None = None, init_biases: bool = True):
        super().__init__()
        self.yaml = copy.deepcopy(cfg)
        self.model, self.save = parse_model(self.yaml, ch)
        self.nc = self.yaml["nc"]
        self.names = list(names) if names else [str(i) for i in range(self.nc)]
        head = self.detect
        if not isinstance(head, Detect):
            raise ConfigError("the last layer of a YOLO config must be Detect or IDetect")
        strides = self._strides(ch)
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

    def _strides(self, ch: int) -> torch.Tensor:
        sizes = []
        hook = self.detect.register_forward_pre_hook(lambda m, inp: sizes.extend(t.shape[-1] for t in inp[0]))
        try:
            with torch.no_grad():
                self.forward(torch.zeros(1, ch, 256, 256))
        finally:
            hook.remove()
        return torch.tensor([256 / s for s in sizes], dtype=torch.float32)

    def _initialize_biases(self) -> None:
        # Upstream's prior: ~8 objects per 640 image, uniform classes; gives realistic scores to generated weights.
        head = self.detect
        for conv, s in zip(head.m, head.stride):
            b = conv.bias.view(head.na, -1)
            with torch.no_grad():
                b[:, 4] += math.log(8 / (640 / float(s)) ** 2)
                b[:, 5:] += math.log(0.6 / (head.nc - 0.99))

    def forward(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def conv_layers(self) -> "OrderedDict[str, nn.Conv2d]":
        """Every Conv2d of the model, keyed by its official state_dict prefix (e.g. ``model.0.conv``)."""
        return OrderedDict((name, m) for name, m in self.named_modules() if isinstance(m, nn.Conv2d))
