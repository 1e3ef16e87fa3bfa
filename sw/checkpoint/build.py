"""The shared last step of every loader: a model of the right structure, filled strictly by tensor name.

Official checkpoints, plain state_dicts (:mod:`.load`) and quantized artifacts (:mod:`.artifact`) all end
here, so a tensor that does not fit the architecture is reported the same way whatever the file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import CheckpointError
from ..models import YoloModel
from ..models.fuse import fuse_repconv
from ..models.layers import Conv, RepConv


@dataclass
class LoadedModel:
    """A model ready for inference plus where it came from."""

    model: YoloModel
    source: str
    kind: str                       # 'official', 'state_dict' or 'quantized'
    extras: dict = field(default_factory=dict)


def class_names(raw, nc: int) -> list[str] | None:
    """The class names a checkpoint carries, if they are nc short strings (else the model numbers them)."""
    if isinstance(raw, dict):
        if not all(isinstance(k, int) for k in raw):
            return None
        raw = [raw[k] for k in sorted(raw)]
    if isinstance(raw, (list, tuple)) and len(raw) == nc and all(isinstance(n, str) and len(n) < 256 for n in raw):
        return list(raw)
    return None


def build_for_state_dict(cfg: dict, state_dict: dict, names=None) -> YoloModel:
    """A model with the structure a state_dict implies: fused RepConvs, BN already folded into Conv blocks."""
    model = YoloModel(cfg, names=names, init_biases=False)
    for name, m in model.named_modules():
        if isinstance(m, RepConv) and f"{name}.rbr_reparam.weight" in state_dict:
            fuse_repconv(m)
        elif isinstance(m, Conv) and f"{name}.bn.weight" not in state_dict and f"{name}.conv.bias" in state_dict:
            m.bn = None
            m.conv.bias = torch.nn.Parameter(torch.zeros(m.conv.out_channels))
    return model


def check_finite(tensors: dict, source: str) -> None:
    """Every floating-point tensor (weights, BN statistics, anchors) holds finite values."""
    for k, t in tensors.items():
        if t.dtype.is_floating_point and not torch.isfinite(t).all():
            raise CheckpointError(f"{source}: {k} holds NaN or infinite values")


def load_tensors(model: YoloModel, tensors: dict, source: str) -> None:
    check_finite(tensors, source)
    tensors = dict(tensors)
    head = model.detect
    head_name = f"model.{len(model.model) - 1}"
    grid = tensors.pop(f"{head_name}.anchor_grid", None)  # YOLOv7 stores it; derived here from anchors*stride
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    wrong = [f"{k} {tuple(tensors[k].shape)} != {tuple(own[k].shape)}"
             for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:  # names from the file: each cut short
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(k[:80] for k in unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:3])}")
        raise CheckpointError(f"{source}: tensors do not fit the architecture: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in model.state_dict(keep_vars=True).items():
            src = tensors[k]
            if not src.dtype.is_floating_point and v.dtype.is_floating_point:
                raise CheckpointError(f"{source}: {k} has dtype {src.dtype}, expected floating point")
            v.copy_(src.to(v.dtype))
    if grid is not None:
        expected = head.anchors * head.stride.view(-1, 1, 1)
        if grid.numel() != expected.numel() or not torch.allclose(grid.float().view(-1), expected.view(-1), rtol=1e-3):
            raise CheckpointError(f"{source}: {head_name}.anchor_grid disagrees with anchors x stride")
