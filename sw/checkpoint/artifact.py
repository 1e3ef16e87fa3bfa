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
import math
import os
import zipfile
from collections import OrderedDict

import numpy as np
import torch

from .. import limits
from ..atomic import atomic_path
from ..errors import CheckpointError, ConfigError, YoloqError
from ..intref.bounds import SCALE_RANGE
from ..quant.accounting import fp16_storage, quantized_storage
from ..quant.granularity import GROUP_AXES, num_groups
from ..quant.model import LayerResult, QuantizedModel, QuantSpec
from ..quant.record import METHODS, QuantizedTensor, dequantize
from .build import LoadedModel, build_for_state_dict, check_finite, class_names, load_tensors
from .safezip import SafeZip, check_input_file
from .unpickler import brief, check_tree

FORMAT = "yoloq.quantized"
VERSION = 2  # 2: PWLQ tails anchored at a stored breakpoint (version 1 had tail zero-points)
MANIFEST = "yoloq.json"


def is_quantized_artifact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip with a manifest (a zip that cannot be read safely is left to the caller)."""
    try:
        with SafeZip(path, str(path)) as z:
            return MANIFEST in z.names
    except CheckpointError:
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
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
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
    """Arrays of the artifact, each checked against its declared dtype and shape before it is read."""

    def __init__(self, z: SafeZip):
        self.z, self.source, self.names = z, z.source, z.names

    def npy(self, entry: str) -> np.ndarray:
        """A ``.npy`` member; its header's element count must match the bytes present before any allocation."""
        data = self.z.read(entry, limits.MAX_TENSOR_BYTES)
        try:
            fh = io.BytesIO(data)
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version}")
            shape, fortran, dtype = read_header(fh)
        except (ValueError, SyntaxError, TypeError, OverflowError) as e:
            raise CheckpointError(f"{self.source}: {entry} is not a plain numeric array ({str(e)[:80]})") from None
        if dtype.hasobject or dtype.kind not in "fiub" or len(shape) > 8:
            raise CheckpointError(f"{self.source}: {entry} is not a plain numeric array "
                                  f"({dtype.str}, {len(shape)} dimensions)")
        count = math.prod(shape)
        if count * dtype.itemsize != len(data) - fh.tell():
            raise CheckpointError(f"{self.source}: {entry} claims {count} elements of {dtype.itemsize} bytes, "
                                  f"but holds {len(data) - fh.tell()} bytes")
        a = np.frombuffer(data, dtype=dtype, count=count, offset=fh.tell())
        return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)

    def array(self, entry: str, dtype, shape=None) -> torch.Tensor:
        a = self.npy(entry)
        if a.dtype != dtype or (shape is not None and tuple(a.shape) != tuple(shape)):
            raise CheckpointError(f"{self.source}: {entry} is {a.dtype}{list(a.shape)}, "
                                  f"expected {np.dtype(dtype)}{list(shape) if shape is not None else ''}")
        return torch.from_numpy(a.copy())


def _check_zero_points(source: str, name: str, method: str, bits: int, zero_point: torch.Tensor) -> None:
    """Zero-points against the widths the format declares: affine a k-bit code, symmetric and the PWLQ
    and PWLQ none (0: PWLQ's tails are offset by the stored breakpoint instead)."""
    if method == "affine":
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        what = f"the {bits}-bit code range"
    else:
        lo = hi = 0
        what = f"0 ({method})"
    if zero_point.numel() and (int(zero_point.min()) < lo or int(zero_point.max()) > hi):
        raise CheckpointError(f"{source}: layer {name}: zero-points outside {what} "
                              f"(found {int(zero_point.min())}..{int(zero_point.max())})")


def _read_record(r: _Reader, entry: dict) -> QuantizedTensor:
    name, shape, bits = entry["name"], entry["shape"], entry["bits"]
    method, gran = entry["method"], entry["granularity"]
    if not isinstance(name, str) or not isinstance(shape, list) or len(shape) != 4 \
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.MAX_CHANNELS for v in shape) \
            or method not in METHODS or gran not in GROUP_AXES or isinstance(bits, bool) or not isinstance(bits, int) \
            or not 2 <= bits <= 8:
        raise CheckpointError(f"{r.source}: layer {brief(name)}: invalid record ({brief(method)}, {brief(bits)} bits, "
                              f"{brief(gran)}, shape {brief(shape)})")
    shape = tuple(shape)
    regions = 2 if method == "pwlq" else 1
    groups = num_groups(shape, gran)
    codes = r.array(f"quant/{name}/codes.npy", np.int8, shape)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise CheckpointError(f"{r.source}: layer {name}: codes outside the {bits}-bit range")
    scale = r.array(f"quant/{name}/scale.npy", np.float64, (groups, regions))
    if not torch.isfinite(scale).all() or (scale < SCALE_RANGE[0]).any() or (scale > SCALE_RANGE[1]).any():
        raise CheckpointError(f"{r.source}: layer {name}: scales must be finite, from 2^-64 to 2^64")
    zero_point = r.array(f"quant/{name}/zero_point.npy", np.int64, (groups, regions))
    _check_zero_points(r.source, name, method, bits, zero_point)
    region = breakpoint = None
    if method == "pwlq":
        region = r.array(f"quant/{name}/region.npy", np.bool_, shape)
        breakpoint = r.array(f"quant/{name}/breakpoint.npy", np.float64, (groups, 1))
        if not torch.isfinite(breakpoint).all() or (breakpoint < 0).any():
            raise CheckpointError(f"{r.source}: layer {name}: breakpoints must be finite and non-negative")
    return QuantizedTensor(shape, method, bits, gran, codes, region, scale, zero_point, breakpoint)


def load_quantized(path: str | os.PathLike) -> LoadedModel:
    """Load an artifact as a :class:`~sw.checkpoint.LoadedModel` whose ``extras['quantized']`` is the records."""
    source = str(path)
    check_input_file(path, "quantized artifact")
    with SafeZip(path, source) as z:
        r = _Reader(z)
        try:
            manifest = json.loads(z.read(MANIFEST, limits.MAX_MANIFEST_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{source}: {MANIFEST} is not valid JSON ({type(e).__name__})") from None
        check_tree(manifest, f"{source}: {MANIFEST}")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"{source}: not a yoloq quantized artifact")
        version = manifest.get("version")
        if type(version) is not int or version != VERSION:
            raise CheckpointError(f"{source}: artifact version {brief(version)} is not supported "
                                  f"(this yoloq reads version {VERSION}, the integer)")
        try:
            spec = QuantSpec(**manifest["spec"])
            spec.validate()
            layer_entries = manifest["layers"]
            if not isinstance(layer_entries, list):
                raise TypeError("layers is not a list")
            tensors = {}
            for entry in sorted(n for n in r.names if n.startswith("float/") and n.endswith(".npy")):
                a = r.npy(entry)
                if a.dtype.kind not in "fiu":
                    raise CheckpointError(f"{source}: {entry} is {a.dtype}, expected a numeric array")
                tensors[entry[len("float/"):-len(".npy")]] = torch.from_numpy(
                    a.astype(np.float32) if a.dtype.kind == "f" else a.copy())
            check_finite(tensors, source)  # before anything is dequantized or built
            layers = OrderedDict()
            for e in layer_entries:
                _check_entry(e)
                if e["quantized"]:
                    qt = _read_record(r, e)
                    tensors[f"{e['name']}.weight"] = dequantize(qt)
                    storage = quantized_storage(qt, spec.scale_bits)
                else:
                    qt = None
                    shape = tuple(e["shape"])
                    storage = fp16_storage(math.prod(int(v) for v in shape))
                layers[e["name"]] = LayerResult(e["name"], tuple(e["shape"]), qt, e["granularity"], e["bits"],
                                                e["mse"], e["sqnr_db"], storage, e.get("note", ""),
                                                e.get("candidates", {}))
        except YoloqError as e:
            if isinstance(e, CheckpointError) and str(e).startswith(source):
                raise
            raise CheckpointError(f"{source}: {e}") from None
        except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as e:
            raise CheckpointError(f"{source}: corrupt quantized artifact ({type(e).__name__}: "
                                  f"{str(e)[:80]})") from None
    try:
        model = build_for_state_dict(manifest["config"], tensors)
    except ConfigError as e:
        raise CheckpointError(f"{source}: model config in the artifact: {e}") from None
    model.names = class_names(manifest.get("names"), model.nc) or model.names
    load_tensors(model, tensors, source)
    model.float().eval()
    return LoadedModel(model=model, source=source, kind="quantized",
                       extras={"quantized": QuantizedModel(model, spec, layers),
                               "manifest_source": manifest.get("source")})


def _check_entry(e) -> None:
    """The report fields of a manifest layer entry have the types the report formats (else TypeError)."""
    def number(v):
        return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))

    if not (isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("quantized"), bool)
            and isinstance(e.get("shape"), list) and len(e["shape"]) == 4
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.MAX_CHANNELS for v in e["shape"])
            and isinstance(e.get("granularity"), str) and isinstance(e.get("bits"), int)
            and number(e.get("mse")) and number(e.get("sqnr_db")) and isinstance(e.get("note", ""), str)
            and isinstance(e.get("candidates", {}), dict) and all(number(v) for v in e.get("candidates", {}).values())):
        raise CheckpointError(f"layer entry {brief(e.get('name') if isinstance(e, dict) else e)}: invalid record "
                              "(name, quantized, shape, granularity, bits, mse, sqnr_db, note, candidates)")
