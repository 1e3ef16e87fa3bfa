"""The quantized artifact: a versioned, pickle-free file that loads back into a runnable model.

Layout (a zip; every array is ``.npy`` read with ``allow_pickle=False``):

- ``yoloq.json``: ``format`` ("yoloq.quantized"), ``version``, the quantization spec, the deploy-form model
  config and class names, and one entry per conv (shape, method, bits, granularity, error);
- ``quant/<layer>/codes.npy`` (int8), ``region.npy`` (bool, PWLQ only), ``scale.npy`` (float64 [G, R]),
  ``zero_point.npy`` (int64 [G, R]), ``breakpoint.npy`` (float64 [G, 1], PWLQ only): exactly what
  :class:`~sw.quant.record.QuantizedTensor` holds;
- ``float/<name>.npy``: every other tensor of the model (BN, biases, anchors, weights left in FP16).

Loading rebuilds the architecture from the config, checks every array against the layer it claims to
belong to, and dequantizes the codes into the conv weights.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CheckpointError, ConfigError, YoloqError
from .accounting import fp16_storage, quantized_storage
from .granularity import GROUP_AXES, num_groups
from .model import LayerResult, QuantizedModel, QuantSpec
from .record import METHODS, QuantizedTensor, dequantize

FORMAT = "yoloq.quantized"
VERSION = 2  # 2: PWLQ tails anchored at a stored breakpoint (version 1 had tail zero-points)
MANIFEST = "yoloq.json"


def is_quantized_artifact(path: str | os.PathLike) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def save_quantized(qm: QuantizedModel, path: str | os.PathLike, source: str | None = None) -> None:
    """Write ``qm`` atomically."""
    quantized = {name for name, r in qm.layers.items() if r.qt is not None}
    layers = []
    for name, r in qm.layers.items():
        layers.append({"name": name, "shape": list(r.shape), "quantized": r.qt is not None,
                       "method": r.qt.method if r.qt else "fp16", "bits": r.bits, "granularity": r.granularity,
                       "mse": r.mse, "sqnr_db": r.sqnr_db, "note": r.note, "candidates": r.candidates})
    manifest = {"format": FORMAT, "version": VERSION, "source": source, "spec": qm.spec.as_dict(),
                "config": qm.model.yaml, "names": list(qm.model.names), "layers": layers}
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for key, t in qm.model.state_dict().items():
            if key.endswith(".weight") and key[: -len(".weight")] in quantized:
                continue
            layer = key.rsplit(".", 1)[0]
            keep_half = layer in qm.layers and qm.layers[layer].qt is None and key.endswith(".weight")
            zf.writestr(f"float/{key}.npy", _npy((t.half() if keep_half else t).numpy()))
        for name in quantized:
            qt = qm.layers[name].qt
            zf.writestr(f"quant/{name}/codes.npy", _npy(qt.codes.numpy()))
            zf.writestr(f"quant/{name}/scale.npy", _npy(qt.scale.numpy()))
            zf.writestr(f"quant/{name}/zero_point.npy", _npy(qt.zero_point.numpy()))
            if qt.region is not None:
                zf.writestr(f"quant/{name}/region.npy", _npy(qt.region.numpy()))
                zf.writestr(f"quant/{name}/breakpoint.npy", _npy(qt.breakpoint.numpy()))


class _Reader:
    def __init__(self, zf: zipfile.ZipFile, source: str):
        self.zf, self.source, self.names = zf, source, set(zf.namelist())

    def array(self, entry: str, dtype, shape=None) -> torch.Tensor:
        if entry not in self.names:
            raise CheckpointError(f"{self.source}: {entry} is missing")
        try:
            a = np.load(io.BytesIO(self.zf.read(entry)), allow_pickle=False)
        except ValueError as e:
            raise CheckpointError(f"{self.source}: {entry} is not a plain numeric array ({e})") from e
        if a.dtype != dtype or (shape is not None and tuple(a.shape) != tuple(shape)):
            raise CheckpointError(f"{self.source}: {entry} is {a.dtype}{list(a.shape)}, "
                                  f"expected {np.dtype(dtype)}{list(shape) if shape is not None else ''}")
        return torch.from_numpy(a.copy())


def _read_record(r: _Reader, entry: dict) -> QuantizedTensor:
    name, shape, bits = entry["name"], tuple(entry["shape"]), entry["bits"]
    method, gran = entry["method"], entry["granularity"]
    if method not in METHODS or gran not in GROUP_AXES or not isinstance(bits, int) or not 2 <= bits <= 8 \
            or len(shape) != 4:
        raise CheckpointError(f"{r.source}: layer {name}: invalid record ({method}, {bits} bits, {gran}, {shape})")
    regions = 2 if method == "pwlq" else 1
    groups = num_groups(shape, gran)
    codes = r.array(f"quant/{name}/codes.npy", np.int8, shape)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise CheckpointError(f"{r.source}: layer {name}: codes outside the {bits}-bit range")
    scale = r.array(f"quant/{name}/scale.npy", np.float64, (groups, regions))
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise CheckpointError(f"{r.source}: layer {name}: scales must be finite and positive")
    zero_point = r.array(f"quant/{name}/zero_point.npy", np.int64, (groups, regions))
    region = breakpoint = None
    if method == "pwlq":
        region = r.array(f"quant/{name}/region.npy", np.bool_, shape)
        breakpoint = r.array(f"quant/{name}/breakpoint.npy", np.float64, (groups, 1))
        if not torch.isfinite(breakpoint).all() or (breakpoint < 0).any():
            raise CheckpointError(f"{r.source}: layer {name}: breakpoints must be finite and non-negative")
    return QuantizedTensor(shape, method, bits, gran, codes, region, scale, zero_point, breakpoint)


def load_quantized(path: str | os.PathLike):
    """Load an artifact as a :class:`~sw.checkpoint.LoadedModel` whose ``extras['quantized']`` is the records."""
    from ..checkpoint.load import LoadedModel, _load_tensors, build_for_state_dict

    source = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            r = _Reader(zf, source)
            try:
                manifest = json.loads(zf.read(MANIFEST))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{source}: {MANIFEST} is not valid JSON ({e})") from e
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise CheckpointError(f"{source}: not a yoloq quantized artifact")
            if manifest.get("version") != VERSION:
                raise CheckpointError(f"{source}: artifact version {manifest.get('version')} is not supported "
                                      f"(this yoloq reads version {VERSION})")
            try:
                spec = QuantSpec(**manifest["spec"])
            except TypeError as e:
                raise CheckpointError(f"{source}: unknown quantization spec fields ({e})") from e
            tensors = {}
            for entry in sorted(n for n in r.names if n.startswith("float/") and n.endswith(".npy")):
                key = entry[len("float/"):-len(".npy")]
                try:
                    a = np.load(io.BytesIO(zf.read(entry)), allow_pickle=False)
                except ValueError as e:
                    raise CheckpointError(f"{source}: {entry} is not a plain numeric array ({e})") from e
                if a.dtype.kind not in "fiu":
                    raise CheckpointError(f"{source}: {entry} is {a.dtype}, expected a numeric array")
                tensors[key] = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.copy())
            layers = OrderedDict()
            for e in manifest["layers"]:
                if e["quantized"]:
                    qt = _read_record(r, e)
                    tensors[f"{e['name']}.weight"] = dequantize(qt)
                    storage = quantized_storage(qt, spec.scale_bits)
                else:
                    qt = None
                    shape = tuple(e["shape"])
                    storage = fp16_storage(int(np.prod(shape)))
                layers[e["name"]] = LayerResult(e["name"], tuple(e["shape"]), qt, e["granularity"], e["bits"],
                                                e["mse"], e["sqnr_db"], storage, e.get("note", ""),
                                                e.get("candidates", {}))
    except (zipfile.BadZipFile, OSError, KeyError, TypeError, AttributeError) as e:
        if isinstance(e, YoloqError):
            raise
        raise CheckpointError(f"{source}: corrupt quantized artifact ({type(e).__name__}: {e})") from e
    try:
        model = build_for_state_dict(manifest["config"], tensors, names=manifest.get("names"))
    except ConfigError as e:
        raise CheckpointError(f"{source}: model config in the artifact: {e}") from e
    _load_tensors(model, tensors, source)
    model.float().eval()
    return LoadedModel(model=model, source=source, kind="quantized",
                       extras={"quantized": QuantizedModel(model, spec, layers), "manifest_source": manifest.get("source")})
