"""Write checkpoints in the official YOLOv5/YOLOv7 format, and generate realistic weights for them.

The official format pickles the model object itself, so the file names classes such as ``models.yolo.Model``
and ``models.common.Conv``. :func:`write_official_checkpoint` produces exactly that structure from a yoloq
model: a pickler maps each yoloq class to a stand-in class registered under the upstream module name only
while the pickle is written. The checkpoint is half precision, like the released ones.

:func:`generate_weights` fills a model with weights shaped like trained ones (heavy-tailed, per-filter
spread, BN statistics matched to the activations), so quantizers and hardware see realistic tensors for
architectures whose trained weights are not available here (YOLOv7).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import types
from collections import OrderedDict

import torch
from torch import nn

from ..atomic import atomic_path
from ..models.heads import Detect, IDetect
from ..models.layers import (C3, MP, SP, SPPCSPC, SPPF, Bottleneck, Concat, Conv, ImplicitA, ImplicitM,
                             RepConv)
from ..models.yolo import YoloModel

_UPSTREAM = {
    YoloModel: ("models.yolo", "Model"), Detect: ("models.yolo", "Detect"), IDetect: ("models.yolo", "IDetect"),
    **{cls: ("models.common", cls.__name__) for cls in
       (Conv, RepConv, SPPCSPC, MP, SP, Concat, Bottleneck, C3, SPPF, ImplicitA, ImplicitM)},
}


@contextlib.contextmanager
def _upstream_stand_ins():
    """Register empty classes under upstream module names for the duration of one pickling."""
    saved = {name: sys.modules.get(name) for name in ("models", "models.yolo", "models.common")}
    pkg = types.ModuleType("models")
    mods = {"models.yolo": types.ModuleType("models.yolo"), "models.common": types.ModuleType("models.common")}
    stand_ins = {}
    for cls, (mod, name) in _UPSTREAM.items():
        stub = type(name, (), {"__module__": mod})
        setattr(mods[mod], name, stub)
        stand_ins[cls] = stub
    pkg.yolo, pkg.common = mods["models.yolo"], mods["models.common"]
    sys.modules.update({"models": pkg, **mods})
    try:
        yield stand_ins
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def _as_upstream(module: nn.Module, stand_ins: dict):
    """A copy of the module tree in which yoloq classes are replaced by the upstream stand-ins.

    Stand-in instances carry the same ``__dict__`` as the originals, so default pickling (protocol 2
    NEWOBJ + BUILD of the instance dict) gives the structure torch.save gives upstream's own modules.
    """
    children = OrderedDict((k, None if v is None else _as_upstream(v, stand_ins)) for k, v in module._modules.items())
    stub = stand_ins.get(type(module))
    if stub is None:  # a torch.nn module: keep its class, swap in converted children
        new = copy.copy(module)
        new.__dict__["_modules"] = children
        return new
    state = dict(module.__dict__, _modules=children)
    if isinstance(module, Detect):  # YOLOv7 also stores the pixel anchor grid as a buffer
        grid = (module.anchors * module.stride.view(-1, 1, 1)).view(module.nl, 1, -1, 1, 1, 2)
        state["_buffers"] = OrderedDict(state["_buffers"], anchor_grid=grid.to(module.anchors.dtype))
    new = stub.__new__(stub)
    new.__dict__.update(state)
    return new


def write_official_checkpoint(model: YoloModel, path: str | os.PathLike, yaml_file: str = "yolov7.yaml") -> None:
    """Save ``model`` as an official-format checkpoint (``{'model': Model, 'epoch': -1, ...}``), atomically."""
    m = copy.deepcopy(model).half().eval()
    m.yaml_file = yaml_file
    ckpt = {"epoch": -1, "best_fitness": None, "training_results": None, "model": None, "ema": None,
            "updater": None, "optimizer": None, "wandb_id": None}
    with _upstream_stand_ins() as stand_ins, atomic_path(path) as tmp:
        ckpt["model"] = _as_upstream(m, stand_ins)
        torch.save(ckpt, tmp, pickle_protocol=2)


@torch.no_grad()
def generate_weights(model: YoloModel, seed: int = 0, calib_size: int = 256) -> YoloModel:
    """Fill ``model`` in place with seeded, trained-looking weights; returns it in eval mode.

    Conv weights are Student-t (df=4, heavy tails like trained filters) with a log-normal spread of filter
    magnitudes; BN affine parameters are random; BN running statistics are then set from one forward pass of
    a smooth random image batch, so every layer's activations keep a sane scale through the whole network.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(4.0)
    torch.manual_seed(seed)  # StudentT samples from the global generator
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            w = t.sample(module.weight.shape)
            spread = torch.exp(0.4 * torch.randn(module.out_channels, 1, 1, 1, generator=g))
            module.weight.copy_(w * spread / math.sqrt(fan_in) * 0.8)
            if module.bias is not None:
                module.bias.normal_(0.0, 0.05, generator=g)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.uniform_(0.6, 1.4, generator=g)
            module.bias.normal_(0.0, 0.3, generator=g)
            module.reset_running_stats()
            module.momentum = None  # cumulative average: one batch sets the statistics exactly
        elif isinstance(module, ImplicitA):
            module.implicit.normal_(0.0, 0.02, generator=g)
        elif isinstance(module, ImplicitM):
            module.implicit.normal_(1.0, 0.02, generator=g)
    head = model.detect
    for conv in head.m:
        conv.weight.mul_(0.1)
        conv.bias.zero_()
    model._initialize_biases()
    coarse = torch.rand(2, 3, calib_size // 16, calib_size // 16, generator=g)
    images = nn.functional.interpolate(coarse, size=(calib_size, calib_size), mode="bilinear", align_corners=False)
    model.train()
    model(images)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.03
    return model.eval()
