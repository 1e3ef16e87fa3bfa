"""Build a runnable :class:`~sw.models.YoloModel` from an official checkpoint or a plain state_dict.

Official YOLOv5/YOLOv7 ``.pt`` files pickle a whole ``models.yolo.Model`` carrying its config in ``yaml``.
They are read with :mod:`.unpickler` (nothing from the file runs); the architecture is rebuilt from the
embedded config with yoloq's own modules and the tensors are loaded strictly by name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..models import YoloModel, builtin_config
from ..models.configs import BUILTIN
from ..models.fuse import fuse_repconv
from ..models.layers import Conv, RepConv
from .unpickler import Record, read_torch_zip




@dataclass
class LoadedModel:
    """A model ready for inference plus where it came from."""

    model: YoloModel
    source: str
    kind: str                       # 'official', 'state_dict' or 'quantized'
    extras: dict = field(default_factory=dict)


def _collect(rec: Record, prefix: str, tensors: dict, bn_eps: dict) -> None:
    """Walk a pickled module tree, gathering persistent parameters/buffers by state_dict name."""
    state = rec.state
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if isinstance(t, torch.Tensor) and name not in skip:
                tensors[prefix + name] = t
    if rec.qualname.endswith("BatchNorm2d") and isinstance(state.get("eps"), float):
        bn_eps[prefix.rstrip(".")] = state["eps"]
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, Record):
            _collect(child, f"{prefix}{name}.", tensors, bn_eps)


def _find_model_record(obj, source: str) -> Record | None:
    if isinstance(obj, Record) and "yaml" in obj.state:
        return obj
    if isinstance(obj, dict):
        for key in ("model", "ema"):
            rec = obj.get(key)
            if isinstance(rec, Record) and "yaml" in rec.state:
                return rec
            if isinstance(rec, Record):
                raise CheckpointError(f"{source}: '{key}' is a {rec.qualname} without an embedded config")
    return None


def _as_state_dict(obj) -> dict | None:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return obj
    return None


def _names(raw, nc: int) -> list[str]:
    if isinstance(raw, dict):
        raw = [raw[k] for k in sorted(raw)]
    if isinstance(raw, (list, tuple)) and len(raw) == nc and all(isinstance(n, str) for n in raw):
        return list(raw)
    return [str(i) for i in range(nc)]


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


def _load_tensors(model: YoloModel, tensors: dict, source: str) -> None:
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
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
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


def model_from_official(rec: Record, source: str) -> YoloModel:
    cfg = rec.state["yaml"]
    tensors, bn_eps = {}, {}
    _collect(rec, "", tensors, bn_eps)
    nc = cfg.get("nc", 80) if isinstance(cfg, dict) else 80
    try:
        model = build_for_state_dict(cfg, tensors, names=_names(rec.state.get("names"), nc))
    except ConfigError as e:
        raise CheckpointError(f"{source}: embedded config: {e}") from e
    _load_tensors(model, tensors, source)
    for name, m in model.named_modules():
        if name in bn_eps:
            m.eps = bn_eps[name]
    return model


def infer_builtin(state_dict: dict) -> str | None:
    """The built-in architecture whose tensor names and shapes a plain state_dict matches exactly."""
    for name in BUILTIN:
        cfg = builtin_config(name)
        try:
            model = build_for_state_dict(cfg, state_dict)
        except ConfigError:
            continue
        own = model.state_dict()
        keys = set(state_dict) - {k for k in state_dict if k.endswith(".anchor_grid")}
        if keys == set(own) and all(own[k].shape == state_dict[k].shape for k in own):
            return name
    return None


def load_model(path: str | os.PathLike, cfg: str | dict | None = None) -> LoadedModel:
    """Load any checkpoint yoloq understands: official ``.pt``, plain state_dict, or a quantized artifact."""
    source = str(path)
    if not Path(path).is_file():
        raise CheckpointError(f"{source}: checkpoint file not found")
    from ..quant.artifact import is_quantized_artifact, load_quantized  # late: quant imports models

    if is_quantized_artifact(path):
        return load_quantized(path)
    obj = read_torch_zip(path)
    rec = _find_model_record(obj, source)
    if rec is not None:
        model = model_from_official(rec, source)
        kind = "official"
    else:
        sd = _as_state_dict(obj)
        if sd is None:
            raise CheckpointError(f"{source}: holds neither a YOLO model object nor a state_dict of tensors")
        if cfg is None:
            cfg = infer_builtin(sd)
            if cfg is None:
                raise CheckpointError(f"{source}: a plain state_dict that matches no built-in model "
                                      f"({', '.join(BUILTIN)}); pass --cfg with its architecture")
        cfg_dict = builtin_config(cfg) if isinstance(cfg, str) else cfg
        model = build_for_state_dict(cfg_dict, sd)
        _load_tensors(model, sd, source)
        kind = "state_dict"
    model.float().eval()
    return LoadedModel(model=model, source=source, kind=kind)
