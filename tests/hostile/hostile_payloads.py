"""Builders of hostile inputs: pickles assembled opcode by opcode, torch-layout zips, official-format
checkpoints with a mutated object tree, artifacts with rewritten members, PNG headers."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

# ---- a tiny pickle assembler (protocol 2 opcodes) -----------------------------------------------------------
PROTO, STOP, MARK, TUPLE, EMPTY_TUPLE = b"\x80\x02", b".", b"(", b"t", b")"
EMPTY_DICT, EMPTY_LIST, SETITEM, APPEND, REDUCE, BUILD = b"}", b"]", b"s", b"a", b"R", b"b"
NONE, FALSE, BINPERSID = b"N", b"\x89", b"Q"


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def S(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def I(n: int) -> bytes:  # noqa: E743 - an opcode helper
    if -(1 << 31) <= n < (1 << 31):
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def T(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def PUT(i: int) -> bytes:
    return b"q" + bytes([i])


def GET(i: int) -> bytes:
    return b"h" + bytes([i])


def persid(key, storage_type: str = "FloatStorage", numel: int = 0) -> bytes:
    key_op = S(key) if isinstance(key, str) else key
    return T(S("storage"), G("torch", storage_type), key_op, S("cpu"), I(numel)) + BINPERSID


def tensor(key, size, stride, offset: int = 0, storage_type: str = "FloatStorage", numel: int = 0) -> bytes:
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return (G("torch._utils", "_rebuild_tensor_v2")
            + T(persid(key, storage_type, numel), I(offset), T(*map(I, size)), T(*map(I, stride)), FALSE,
                G("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE) + REDUCE)


def state_dict(**items: bytes) -> bytes:
    """A pickle of {name: <opcodes>} ending in STOP."""
    return PROTO + EMPTY_DICT + b"".join(S(k) + v + SETITEM for k, v in items.items()) + STOP


def zip_checkpoint(path: Path, pkl: bytes, storages: dict[str, bytes] | None = None,
                   compression: int = zipfile.ZIP_STORED) -> Path:
    """A file with torch's zip layout around an arbitrary pickle and storages."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("archive/data.pkl", pkl)
        zf.writestr("archive/version", "3\n")
        for key, raw in (storages or {}).items():
            zf.writestr(f"archive/data/{key}", raw)
    return path


def zip_member_of_zeros(path: Path, member: str, nbytes: int, extra: dict[str, bytes] | None = None) -> Path:
    """A zip whose ``member`` inflates to ``nbytes`` zeros (deflate, ~1000:1): a real zip bomb, streamed."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)
        info = zipfile.ZipInfo(member)
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            chunk = bytes(1 << 22)
            for _ in range(nbytes // len(chunk)):
                fh.write(chunk)
    return path


# ---- official-format checkpoints with a mutated object tree --------------------------------------------------
def tiny_model(nc: int = 2):
    from sw.models import YoloModel, builtin_config

    cfg = builtin_config("yolov5n")
    cfg["nc"] = nc
    return YoloModel(cfg).eval()


def official(path: Path, model, mutate=None) -> Path:
    """``torch.save`` of the upstream-shaped checkpoint dict of ``model`` after ``mutate(ckpt)`` edits it."""
    import copy

    from sw.checkpoint.official import _as_upstream, _upstream_stand_ins

    m = copy.deepcopy(model).half().eval()
    with _upstream_stand_ins() as stand_ins:
        ckpt = {"epoch": -1, "model": _as_upstream(m, stand_ins), "ema": None}
        if mutate is not None:
            mutate(ckpt)
        torch.save(ckpt, path, pickle_protocol=2)
    return path


def config_only(path: Path, cfg) -> Path:
    """An official-shaped checkpoint whose model carries ``cfg`` and no tensors (the config fails first)."""
    from sw.checkpoint.official import _upstream_stand_ins

    with _upstream_stand_ins():
        import sys

        stub = sys.modules["models.yolo"].Model
        rec = stub.__new__(stub)
        rec.__dict__.update({"yaml": cfg, "_modules": {}, "_parameters": {}, "_buffers": {}})
        torch.save({"model": rec}, path, pickle_protocol=2)
    return path


# ---- artifacts -----------------------------------------------------------------------------------------------
def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def rewrite_zip(src: Path, dst: Path, changes: dict[str, bytes | None]) -> Path:
    """Copy a zip, replacing (bytes) or dropping (None) the named members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename in changes:
                continue
            zout.writestr(item, zin.read(item.filename))
        for name, data in changes.items():
            if data is not None:  # stored: a replaced member is never refused for its compression ratio
                zout.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return dst


def manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("yoloq.json"))


# ---- images --------------------------------------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height and whose pixel data is a few bytes: a decompression bomb
    for any reader that trusts the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@contextlib.contextmanager
def nothing_else_written(folder: Path, allowed: set[str] = frozenset()):
    """Assert the block adds no file under ``folder`` except the ``allowed`` names."""
    before = {p for p in folder.rglob("*")}
    yield
    added = {p for p in folder.rglob("*")} - before
    assert {p.name for p in added} <= set(allowed), f"unexpected files: {sorted(map(str, added))}"
