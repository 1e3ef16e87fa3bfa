"""Read zip-format torch checkpoints without running anything from them.

A torch ``.pt`` file is a zip holding ``<name>/data.pkl`` (a pickle) and ``<name>/data/<key>`` (raw storages).
Unpickling normally imports and calls whatever globals the pickle names, so a hostile file can run
``os.system``. :class:`RestrictedUnpickler` resolves globals through an allow-list instead:

- tensor rebuilding (``torch._utils._rebuild_tensor_v2`` and friends) maps to yoloq's own functions, which only
  build views of storages read from the zip; the dtype comes from a fixed table of storage types, and the
  storage's size, the view's offset, size and stride are checked against the bytes present before any
  tensor is made;
- ``collections.OrderedDict``, ``set``, ``torch.Size``, torch dtypes and storage type names map to themselves
  or to dtype markers (constructing them runs no user code);
- model classes (``models.*``, ``torch.nn.modules.*``) and numpy scalar/array helpers map to inert
  :class:`Record` types that just keep the state pickled into them.

Every other global is refused with :class:`~sw.errors.UnsafeCheckpointError` before anything is called (and
before anything is imported: names are looked up in fixed tables, never with ``getattr(torch, name)``).

The pure-Python unpickler is used so that opcodes can be policed: BUILD (``__setstate__`` or attribute
setting) is refused on everything but Records, so a pickle cannot change a storage type's dtype, grow a
tensor with ``set_()`` or rewrite a class. Sizes are capped before reading (:mod:`.safezip`), and the loaded
object tree is walked once, iteratively, for depth, cycles and its expanded size (a "billion laughs" of
shared lists is refused before anything recursive, ``repr`` included, touches it). Messages quote file data
only through :func:`brief`, so they stay one short line.
"""

from __future__ import annotations

import io
import os
import pickle
from collections import OrderedDict

import torch

from .. import limits
from ..errors import CheckpointError, UnsafeCheckpointError
from .safezip import SafeZip, check_input_file

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}
# dtype names a pickle may name as torch.<name> (torch._utils rebuild metadata, numpy-free).
_DTYPES = {str(d).split(".", 1)[1]: d for d in
           (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
            torch.int8, torch.uint8, torch.bool)}
_RECORD_MODULE_PREFIXES = ("models.", "torch.nn.modules.", "utils.")
_NUMPY_NAMES = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "dtype"), ("numpy", "ndarray")}
_MAX_DIMS = 16
_MAX_KEY = 64   # characters of a storage key ('0', '1', ... in torch files)


def brief(x, width: int = 60) -> str:
    """A short description of untrusted data for messages: never formats more than ``width`` characters."""
    if isinstance(x, (str, bytes)):
        text = repr(x[:width])
        return text + ("..." if len(x) > width else "")
    if isinstance(x, bool) or x is None or isinstance(x, float):
        return repr(x)
    if isinstance(x, int):
        return repr(x) if x.bit_length() <= 64 else f"<int of {x.bit_length()} bits>"
    if isinstance(x, (list, tuple, dict, set)):
        return f"<{type(x).__name__} of {len(x)}>"
    return f"<{type(x).__name__}>"


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
    """A storage class named by the pickle (``torch.FloatStorage``); one fixed instance per name."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_TYPES = {name: _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()}


class _Storage:
    """A storage read from the zip: a flat tensor that only the rebuild functions may view."""

    __slots__ = ("data", "key")

    def __init__(self, data: torch.Tensor, key: str):
        self.data, self.key = data, key


def _int_tuple(x, what: str) -> tuple:
    if not isinstance(x, (tuple, list, torch.Size)) or len(x) > _MAX_DIMS or \
            not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 62) for v in x):
        raise CheckpointError(f"tensor {what} is not a tuple of at most {_MAX_DIMS} ints from 0 to 2^62: {brief(x)}")
    return tuple(x)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """Safe version of torch._utils._rebuild_tensor_v2: a bounds-checked view, no hooks."""
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor rebuild got something that is not a storage from the file")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise CheckpointError(f"bad storage offset {brief(storage_offset)}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    data = storage.data
    numel = 1
    for s in size:
        numel *= s
    extent = storage_offset + (sum((s - 1) * st for s, st in zip(size, stride)) + 1 if numel else 0)
    if extent > data.numel() or numel > max(data.numel(), 1):
        raise CheckpointError(f"tensor view {size}/{stride}+{storage_offset} overruns storage '{storage.key}' "
                              f"of {data.numel()} elements")
    return data.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    if not isinstance(data, torch.Tensor):
        raise CheckpointError("parameter rebuild got a non-tensor")
    return data


def _safe_callable(fn):
    """Wrap an allowed callable so wrong-typed arguments become a CheckpointError, not a deep traceback."""
    name = getattr(fn, "__name__", "call")

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here is the file's fault
            raise CheckpointError(f"{name}: invalid arguments in checkpoint ({type(e).__name__})") from None
    call.__name__ = name
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


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the Python unpickler, for its opcode table
    """Unpickler for torch zip checkpoints with an allow-list of globals (see module docstring)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(self, data: bytes, storages, source: str):
        super().__init__(io.BytesIO(data))
        self._storages = storages
        self._source = source

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if module == "torch" and name in _STORAGE_TYPES:
            return _STORAGE_TYPES[name]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if key in _NUMPY_NAMES:
            return record_type(f"{module}.{name}")
        if module.startswith(_RECORD_MODULE_PREFIXES) and name.isidentifier() and name[0].isupper() \
                and len(module) + len(name) < 200:
            return record_type(f"{module}.{name}")
        raise UnsafeCheckpointError(
            f"{self._source}: refused: the pickle asks for '{module[:80]}.{name[:80]}', "
            "which is neither a tensor-rebuilding function nor a model class. Nothing from the file was run.")

    def load(self):
        """pickle._Unpickler.load with an opcode budget (limits.MAX_PICKLE_OPS): a small pickle of cheap
        opcodes cannot keep the Python unpickler busy for long."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # noqa: SLF001
        self.read, self.readinto, self.readline = (self._unframer.read, self._unframer.readinto,
                                                   self._unframer.readline)
        self.metastack, self.stack = [], []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch = self.read, self.dispatch
        try:
            for _ in range(limits.MAX_PICKLE_OPS):
                key = read(1)
                if not key:
                    raise EOFError
                dispatch[key[0]](self)
        except pickle._Stop as stop:  # noqa: SLF001
            return stop.value
        raise CheckpointError(f"more than {limits.MAX_PICKLE_OPS} pickle opcodes (an official YOLOv7 "
                              "checkpoint has ~65,000)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self._source}: unknown persistent id {brief(pid)}")
        storage_type, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not any(storage_type is t for t in _STORAGE_TYPES.values()):
            raise CheckpointError(f"{self._source}: storage of unknown type {brief(storage_type)}")
        if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY:
            raise CheckpointError(f"{self._source}: storage key {brief(key)} is not a short string")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise CheckpointError(f"{self._source}: storage '{key}' has a bad element count {brief(numel)}")
        return self._storages(key, storage_type.dtype, numel)

    def load_build(self):
        """BUILD only fills Records; on anything else (a tensor, a storage type, a class) it is refused.

        The one exception is a state_dict's ``OrderedDict`` with its ``_metadata`` attribute (torch.save puts
        it there); that state is dropped, as yoloq does not use it."""
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if type(inst) is OrderedDict:
            self.stack.pop()
            return
        if not isinstance(inst, Record):
            raise UnsafeCheckpointError(f"{self._source}: refused: the pickle sets the state of a "
                                        f"{type(inst).__name__}, which only model records may have. "
                                        "Nothing from the file was run.")
        state = self.stack.pop()
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build


_CONTAINERS = (Record, dict, list, tuple, set, frozenset)


def check_tree(obj, source: str, max_depth: int = limits.MAX_NESTING, max_objects: int = limits.MAX_OBJECTS) -> None:
    """Refuse an object tree that is cyclic, nested deeper than ``max_depth``, or larger than ``max_objects``
    when every shared reference is counted again (what a recursive walk, ``repr`` or ``json.dumps`` would see).
    Iterative, so it cannot itself overflow the stack."""
    count = 1
    on_path: set[int] = set()
    stack = [(obj, 0, False)] if isinstance(obj, _CONTAINERS) else []
    while stack:
        x, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(x))
            continue
        if id(x) in on_path:
            raise CheckpointError(f"{source}: the object tree contains itself (a reference cycle)")
        if depth >= max_depth:
            raise CheckpointError(f"{source}: objects nested more than {max_depth} deep")
        if isinstance(x, Record):
            children = (x.args, x.kwargs, x.state)
        elif isinstance(x, dict):
            children = [v for kv in x.items() for v in kv]
        else:
            children = x
        count += len(children)
        if count > max_objects:
            raise CheckpointError(f"{source}: more than {max_objects} objects (counting shared references); "
                                  "refused as a resource bomb")
        on_path.add(id(x))
        stack.append((x, depth, True))
        stack.extend((c, depth + 1, False) for c in children if isinstance(c, _CONTAINERS))


def _archive_prefix(names, source: str) -> str:
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise CheckpointError(f"{source}: not a torch checkpoint (zip without a single '<name>/data.pkl')")
    return pkls[0][: -len("data.pkl")]


def read_torch_zip(path: str | os.PathLike):
    """Unpickle a zip-format torch checkpoint safely; returns its object with model classes as Records."""
    source = str(path)
    check_input_file(path, "checkpoint file")
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
    with SafeZip(path, source) as z:
        prefix = _archive_prefix(z.names, source)
        order = prefix + "byteorder"
        if order in z.names and z.read(order, 16).strip() not in (b"little", b""):
            raise CheckpointError(f"{source}: big-endian checkpoints are not supported")
        cache: dict[str, _Storage] = {}

        def storage(key: str, dtype: torch.dtype, numel: int) -> _Storage:
            entry = f"{prefix}data/{key}"
            if entry not in z.names:
                raise CheckpointError(f"{source}: storage '{key}' referenced by the pickle is missing")
            if key not in cache:
                itemsize = torch.empty((), dtype=dtype).element_size()
                nbytes = numel * itemsize if dtype is not torch.uint8 else numel
                if z.size(entry) != nbytes:
                    raise CheckpointError(f"{source}: storage '{key}' holds {z.size(entry)} bytes, the pickle "
                                          f"says {numel} x {itemsize}")
                raw = bytearray(z.read(entry, limits.MAX_TENSOR_BYTES, f"storage '{key}'"))
                data = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
                cache[key] = _Storage(data, key)
            st = cache[key]
            if st.data.dtype != dtype:
                raise CheckpointError(f"{source}: storage '{key}' is used with two dtypes")
            return st

        pkl = z.read(prefix + "data.pkl", limits.MAX_PICKLE_BYTES, "data.pkl")
        try:
            obj = RestrictedUnpickler(pkl, storage, source).load()
        except CheckpointError as e:
            if str(e).startswith(source):
                raise
            raise type(e)(f"{source}: {e}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                RecursionError, MemoryError, OverflowError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{source}: malformed pickle in checkpoint ({type(e).__name__})") from None
    check_tree(obj, source)
    return obj
