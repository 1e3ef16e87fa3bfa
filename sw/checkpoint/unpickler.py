"""Read zip-format torch checkpoints without running anything from them.

A torch ``.pt`` file is a zip holding ``<name>/data.pkl`` (a pickle) and ``<name>/data/<key>`` (raw storages).
Unpickling normally imports and calls whatever globals the pickle names, so a hostile file can run
``os.system``. :class:`RestrictedUnpickler` resolves globals through an allow-list instead:

- tensor rebuilding (``torch._utils._rebuild_tensor_v2`` and friends) maps to yoloq's own functions, which only
  build views of storages read from the zip, bounds-checked;
- ``collections.OrderedDict``, ``set``, ``torch.Size``, torch dtypes and storage type names map to themselves
  or to dtype markers (constructing them runs no user code);
- model classes (``models.*``, ``torch.nn.modules.*``) and numpy scalar/array helpers map to inert
  :class:`Record` types that just keep the state pickled into them.

Every other global is refused with :class:`~sw.errors.UnsafeCheckpointError` before anything is called.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict

import torch

from ..errors import CheckpointError, UnsafeCheckpointError

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
_RECORD_MODULE_PREFIXES = ("models.", "torch.nn.modules.", "utils.")
_NUMPY_NAMES = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "dtype"), ("numpy", "ndarray")}
_MAX_DIMS = 16


class Record:
    """An inert stand-in for an object of a pickled class: keeps constructor args and state, runs nothing."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, {}

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, {}
        return obj

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self):
        return f"<Record {self.qualname}>"


_record_types: dict[str, type] = {}


def record_type(qualname: str) -> type:
    """One Record subclass per pickled class name, so structure (``isinstance``-free) can be inspected."""
    if qualname not in _record_types:
        _record_types[qualname] = type(qualname.rsplit(".", 1)[-1], (Record,), {"qualname": qualname})
    return _record_types[qualname]


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _int_tuple(x, what: str) -> tuple:
    if not isinstance(x, (tuple, list, torch.Size)) or len(x) > _MAX_DIMS or \
            not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in x):
        raise CheckpointError(f"tensor {what} is not a tuple of non-negative ints: {x!r}")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """Safe version of torch._utils._rebuild_tensor_v2: a bounds-checked view, no hooks."""
    if not isinstance(storage, torch.Tensor):
        raise CheckpointError("tensor rebuild got something that is not a storage from the file")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise CheckpointError(f"bad storage offset {storage_offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    extent = storage_offset + (sum((s - 1) * st for s, st in zip(size, stride)) + 1 if all(size) else 0)
    if extent > storage.numel():
        raise CheckpointError(f"tensor view {size}/{stride}+{storage_offset} overruns its storage "
                              f"of {storage.numel()} elements")
    return storage.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("parameter rebuild got a non-tensor")
    return data


def _safe_callable(fn):
    """Wrap an allowed callable so wrong-typed arguments become a CheckpointError, not a deep traceback."""
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here is the file's fault
            raise CheckpointError(f"{getattr(fn, '__name__', fn)}: invalid arguments in checkpoint ({e})") from e
    call.__name__ = getattr(fn, "__name__", "call")
    return call


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _safe_callable(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _safe_callable(lambda st, off, size, stride: _rebuild_tensor(st, off, size, stride)),
    ("torch._utils", "_rebuild_parameter"): _safe_callable(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _safe_callable(_rebuild_parameter),
    ("collections", "OrderedDict"): _safe_callable(OrderedDict),
    ("__builtin__", "set"): _safe_callable(set),
    ("builtins", "set"): _safe_callable(set),
    ("torch", "Size"): _safe_callable(torch.Size),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for torch zip checkpoints with an allow-list of globals (see module docstring)."""

    def __init__(self, data: bytes, storages, source: str):
        super().__init__(io.BytesIO(data))
        self._storages = storages
        self._source = source

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if key in _NUMPY_NAMES:
            return record_type(f"{module}.{name}")
        if module.startswith(_RECORD_MODULE_PREFIXES) and name.isidentifier() and name[0].isupper():
            return record_type(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"{self._source}: refused: the pickle asks for '{module}.{name}', which is neither a "
            "tensor-rebuilding function nor a model class. Nothing from the file was run.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unknown persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"{self._source}: storage of unknown type {storage_type!r:.80}")
        return self._storages(str(key), storage_type.dtype, numel)


def _archive_prefix(zf: zipfile.ZipFile, source: str) -> str:
    pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{source}: not a torch checkpoint (zip without a single '<name>/data.pkl')")
    return pkls[0][: -len("data.pkl")]


def read_torch_zip(path: str | os.PathLike):
    """Unpickle a zip-format torch checkpoint safely; returns its object with model classes as Records."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise CheckpointError(f"{source}: cannot read checkpoint ({e.strerror})") from e
    if head[:2] == b"\x80\x02":
        raise CheckpointError(f"{source}: legacy (pre-1.6, non-zip) torch format is not supported; "
                              "re-save it with torch.save(..., _use_new_zipfile_serialization=True)")
    if head != b"PK\x03\x04":
        raise CheckpointError(f"{source}: not a torch checkpoint (no zip header)")
    try:
        with zipfile.ZipFile(path) as zf:
            prefix = _archive_prefix(zf, source)
            names = set(zf.namelist())
            order = prefix + "byteorder"
            if order in names and zf.read(order).strip() not in (b"little", b""):
                raise CheckpointError(f"{source}: big-endian checkpoints are not supported")
            cache: dict[str, torch.Tensor] = {}

            def storage(key: str, dtype: torch.dtype, numel) -> torch.Tensor:
                entry = f"{prefix}data/{key}"
                if entry not in names:
                    raise CheckpointError(f"{source}: storage '{key}' referenced by the pickle is missing")
                if key not in cache:
                    raw = bytearray(zf.read(entry))
                    itemsize = torch.empty((), dtype=dtype).element_size()
                    if len(raw) % itemsize:
                        raise CheckpointError(f"{source}: storage '{key}' has a partial element")
                    cache[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                t = cache[key]
                if t.dtype != dtype:
                    raise CheckpointError(f"{source}: storage '{key}' is used with two dtypes")
                if isinstance(numel, int) and numel != t.numel() and dtype is not torch.uint8:
                    raise CheckpointError(f"{source}: storage '{key}' holds {t.numel()} elements, "
                                          f"the pickle says {numel}")
                return t

            return RestrictedUnpickler(zf.read(prefix + "data.pkl"), storage, source).load()
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{source}: corrupt or truncated checkpoint ({e})") from e
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RecursionError, MemoryError) as e:
        raise CheckpointError(f"{source}: malformed pickle in checkpoint ({type(e).__name__}: {e})") from e
