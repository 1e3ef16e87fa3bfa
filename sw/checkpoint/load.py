"""Build a runnable :class:`~sw.models.YoloModel` from an official checkpoint or a plain state_dict.

Official YOLOv5/YOLOv7 ``.pt`` files pickle a whole ``models.yolo.Model`` carrying its config in ``yaml``.
They are read with :mod:`.unpickler` (nothing from the file runs); the architecture is rebuilt from the
embedded config with yoloq's own modules and the tensors are loaded strictly by name.
"""

from __future__ import annotations

import os

import torch

from ..errors import CheckpointError, ConfigError
from ..models import YoloModel, builtin_config
from ..models.configs import BUILTIN
from .artifact import is_quantized_artifact, load_quantized
from .build import LoadedModel, build_for_state_dict, check_finite, class_names, load_tensors
from .safezip import check_input_file
from .unpickler import Record, read_torch_zip


def _collect(rec: Record, prefix: str, tensors: dict, bn_eps: dict) -> None:
    """Walk a pickled module tree, gathering persistent parameters/buffers by state_dict name."""
    state = rec.state
    skip = state.get("_non_persistent_buffers_set") or ()
    skip = {n for n in skip if isinstance(n, str)} if isinstance(skip, (set, frozenset, list, tuple)) else set()
    for group in ("_parameters", "_buffers"):
        for name, t in _str_items(state.get(group), f"{prefix}{group}"):
            if isinstance(t, torch.Tensor) and name not in skip:
                tensors[prefix + name] = t
    if rec.qualname.endswith("BatchNorm2d") and isinstance(state.get("eps"), float):
        if not 0 < state["eps"] < 1:  # also refuses NaN
            raise CheckpointError(f"{prefix}eps is {state['eps']}, expected a small positive number")
        bn_eps[prefix.rstrip(".")] = state["eps"]
    for name, child in _str_items(state.get("_modules"), f"{prefix}_modules"):
        if isinstance(child, Record):
            _collect(child, f"{prefix}{name}.", tensors, bn_eps)


def _str_items(d, where: str):
    """The items of a module's name -> value dict; anything else in the pickle is the file's error."""
    if d is None:
        return []
    if not isinstance(d, dict) or not all(isinstance(k, str) and len(k) < 256 for k in d):
        raise CheckpointError(f"{where} is a {type(d).__name__}, expected a dict keyed by names")
    return list(d.items())


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


def model_from_official(rec: Record, source: str) -> YoloModel:
    cfg = rec.state["yaml"]
    tensors, bn_eps = {}, {}
    try:
        _collect(rec, "", tensors, bn_eps)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    check_finite(tensors, source)  # before a model is built for them
    try:
        model = build_for_state_dict(cfg, tensors)
    except ConfigError as e:
        raise CheckpointError(f"{source}: embedded config: {e}") from None
    model.names = class_names(rec.state.get("names"), model.nc) or model.names
    load_tensors(model, tensors, source)
    for name, m in model.named_modules():
        if name in bn_eps:
            m.eps = bn_eps[name]
    return model


def infer_builtin(state_dict: dict) -> str | None:
    """The built-in architecture whose tensor names and shapes a plain state_dict matches exactly.

    Only configs with the state_dict's number of layers (``model.<i>.`` prefixes) are built to compare, so a
    state_dict of some other network is turned down at once."""
    top = {k.split(".", 2)[1] for k in state_dict if k.startswith("model.") and k.count(".") >= 2}
    if not top or not all(t.isdigit() and len(t) < 6 for t in top):
        return None
    count = max(int(t) for t in top) + 1
    for name in BUILTIN:
        cfg = builtin_config(name)
        if len(cfg["backbone"]) + len(cfg["head"]) != count:
            continue
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
    check_input_file(path, "checkpoint file")
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
        try:
            model = build_for_state_dict(cfg_dict, sd)
        except ConfigError as e:
            raise CheckpointError(f"{source}: config: {e}") from None
        load_tensors(model, sd, source)
        kind = "state_dict"
    model.float().eval()
    return LoadedModel(model=model, source=source, kind=kind)
