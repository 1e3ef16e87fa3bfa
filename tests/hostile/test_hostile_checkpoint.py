"""Hostile checkpoints: pickle structure, storage geometry and resource bombs, each refused by ``yoloq eval``
with exit status 2 and one line naming the file, under the memory limit (see hostile_harness)."""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from hostile_harness import run_cli
from hostile_payloads import (APPEND, BUILD, EMPTY_DICT, EMPTY_LIST, GET, MARK, NONE, PROTO, PUT, REDUCE, SETITEM,
                              STOP, G, I,
                              S, T, config_only, official, persid, state_dict, tensor, tiny_model, zip_checkpoint,
                              zip_member_of_zeros)

APPENDS, POP = b"e", b"0"


# The tests that read this module's expensive fixture (a subprocess that imports torch and runs the CLI case after
# case: tens of seconds) are one xdist group: `make test` (--dist loadgroup) runs them on one worker, which makes
# the fixture once instead of once on each worker.
ONE_WORKER = pytest.mark.xdist_group("hostile_checkpoint")


def _laughs(levels: int = 9, fan: int = 10) -> bytes:
    """Nested lists, each holding ``fan`` references to the one below: fan**levels leaves in 40 bytes a level."""
    out = EMPTY_LIST + MARK + S("lol") * fan + APPENDS + PUT(0)
    for i in range(1, levels):
        out += POP + EMPTY_LIST + MARK + GET(i - 1) * fan + APPENDS + PUT(i)  # POP: only the memo keeps it
    return out


def _expanded_size(obj, memo=None) -> int:
    """Nodes a recursive walk of ``obj`` visits (shared references counted again), computed with a memo."""
    memo = {} if memo is None else memo
    if not isinstance(obj, list):
        return 1
    if id(obj) not in memo:
        memo[id(obj)] = 1 + sum(_expanded_size(x, memo) for x in obj)
    return memo[id(obj)]


def _chain(depth: int) -> bytes:
    out = NONE
    for _ in range(depth):
        out = G("models.common", "Conv") + T(out) + REDUCE
    return out


def _with_params_list(ckpt):
    ckpt["model"].__dict__["_parameters"] = [1, 2, 3]


def _nan_eps(ckpt):
    ckpt["model"].__dict__["_modules"]["model"].__dict__["_modules"]["0"].__dict__["_modules"]["bn"].eps = math.nan


def _build_cases(tmp):
    """name -> (path, regex the error line must match)."""
    f32 = bytes(16)  # four float32 zeros
    c = {}

    def ckpt(name, pkl, storages=None, **kw):
        return zip_checkpoint(tmp / f"{name}.pt", pkl, storages, **kw)

    # ---- pickle structure
    c["build sets a storage type's dtype"] = (ckpt("dtype", state_dict(
        w=G("torch", "FloatStorage") + EMPTY_DICT + S("dtype") + G("torch", "float64") + SETITEM + BUILD)),
        r"refused: the pickle sets the state of a _StorageType")
    c["build grows a tensor with set_()"] = (ckpt("grow", state_dict(
        w=tensor("0", (0,), (1,)) + T(persid("0"), I(0), T(I(1 << 20)), T(I(1))) + BUILD), {"0": b""}),
        r"refused: the pickle sets the state of a Tensor")
    c["build rewrites a record class"] = (ckpt("cls", state_dict(
        m=G("models.yolo", "Model") + T(NONE, EMPTY_DICT + S("qualname") + S("posix.system") + SETITEM) + BUILD)),
        r"refused: the pickle sets the state of a type")
    c["5000-deep record chain"] = (ckpt("chain", state_dict(model=_chain(5000))), r"nested more than 64 deep")
    c["list containing itself"] = (ckpt("cycle", state_dict(model=EMPTY_LIST + PUT(0) + GET(0) + APPEND)),
                                   r"contains itself")
    c["billion laughs"] = (ckpt("laughs", state_dict(model=_laughs())), r"more than 500000 objects")
    c["torch._dynamo is not imported"] = (ckpt("dynamo", state_dict(w=G("torch", "_dynamo"))),
                                          r"refused: the pickle asks for 'torch._dynamo'")
    c["storage type outside the table"] = (ckpt("complex", state_dict(
        w=tensor("0", (1,), (1,), storage_type="ComplexDoubleStorage"))), r"refused: .*torch.ComplexDoubleStorage")
    c["_parameters is a list"] = (official(tmp / "params.pt", tiny_model(), _with_params_list),
                                  r"_parameters is a list, expected a dict")
    c["BatchNorm eps NaN"] = (official(tmp / "eps.pt", tiny_model(), _nan_eps), r"model.0.bn.eps is nan")
    # ---- storage geometry
    c["storage smaller than the pickle says"] = (ckpt("short", state_dict(w=tensor("0", (10,), (1,), numel=10)),
                                                      {"0": bytes(8)}), r"storage '0' holds 8 bytes, the pickle says 10 x 4")
    c["view past the end of its storage"] = (ckpt("overrun", state_dict(w=tensor("0", (10,), (1,), numel=4)),
                                                  {"0": f32}), r"overruns storage '0' of 4 elements")
    c["stride-0 view of 10^12 elements"] = (ckpt("expand", state_dict(
        w=tensor("0", (10 ** 6, 10 ** 6), (0, 0), numel=4)), {"0": f32}), r"overruns storage '0'")
    c["negative storage offset"] = (ckpt("offset", state_dict(w=tensor("0", (1,), (1,), offset=-1, numel=4)),
                                          {"0": f32}), r"bad storage offset -1")
    c["size of 2^70"] = (ckpt("huge", state_dict(w=tensor("0", (1 << 70,), (1,), numel=4)), {"0": f32}),
                         r"size is not a tuple of at most 16 ints")
    c["storage key is a billion laughs"] = (ckpt("key", state_dict(
        w=T(S("storage"), G("torch", "FloatStorage"), _laughs(), S("cpu"), I(4)) + b"Q")),
        r"storage key <list of 10> is not a short string")
    c["storage missing from the zip"] = (ckpt("missing", state_dict(w=tensor("7", (1,), (1,), numel=1))),
                                         r"storage '7' referenced by the pickle is missing")
    # ---- resource bombs and zip containers
    c["zip bomb storage (deflate 1000:1)"] = (zip_member_of_zeros(
        tmp / "bomb.pt", "archive/data/0", 96 << 20,
        {"archive/data.pkl": state_dict(w=tensor("0", (24 << 20,), (1,), numel=24 << 20))}), r"a zip bomb\?")
    c["data.pkl of 20 MB"] = (zip_member_of_zeros(tmp / "bigpkl.pt", "archive/data.pkl", 20 << 20),
                              r"data.pkl is 20971520 bytes, more than the 16777216 accepted")
    c["600,000 cheap opcodes"] = (ckpt("ops", PROTO + b"]0" * 600_000 + NONE + STOP),
                                  r"more than 500000 pickle opcodes")
    c["shared-reference bomb in an unused config key"] = (config_only(tmp / "cfgbomb.pt", {"unused": _laughs_obj()}),
                                                          r"more than 500000 objects")
    enc = ckpt("encrypted", state_dict(w=NONE))
    raw = bytearray(enc.read_bytes())  # zipfile cannot write the flag: set "encrypted" in both headers
    raw[6] |= 0x1
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    enc.write_bytes(bytes(raw))
    c["encrypted member"] = (enc, r"data.pkl is encrypted")
    c["bzip2 member"] = (ckpt("bzip2", state_dict(w=NONE), compression=zipfile.ZIP_BZIP2),
                         r"compression method 12")
    sparse_bytes = np.zeros(4 << 20, np.uint8)  # a random byte in 32: each member deflates ~15:1 (under 64)
    sparse_bytes[::32] = np.random.default_rng(0).integers(0, 256, len(sparse_bytes) // 32)
    c["members of 15:1 adding up past 8x the file"] = (ckpt("ratio", state_dict(**{
        f"w{i}": tensor(str(i), (4 << 20,), (1,), storage_type="ByteStorage", numel=4 << 20) for i in range(4)}),
        {str(i): sparse_bytes.tobytes() for i in range(4)}, compression=zipfile.ZIP_DEFLATED),
        r"bytes of data in all \(at most 8x the file's size")
    entries = tmp / "entries.pt"
    with zipfile.ZipFile(entries, "w") as zf:  # an honest zip: 12,000 empty members
        zf.writestr("archive/data.pkl", state_dict(w=NONE))
        for i in range(12_000):
            zf.writestr(f"archive/data/{i}", b"")
    c["12,000 zip entries"] = (entries, r"12001 zip entries in a \d+-byte directory, more than the 10000")
    sparse = tmp / "sparse.pt"
    with open(sparse, "wb") as fh:
        fh.write(b"PK\x03\x04")
        fh.truncate(5 << 30)
    c["5 GB file"] = (sparse, r"more than the 2048 MiB")
    fifo = tmp / "fifo.pt"
    os.mkfifo(fifo)
    c["a FIFO as --weights"] = (fifo, r"is not a regular file \(a FIFO")
    c["a folder as --weights"] = (tmp, r"is a folder, expected a checkpoint file")
    return c


def _laughs_obj(levels: int = 9, fan: int = 10):
    x = ["lol"] * fan
    for _ in range(levels - 1):
        x = [x] * fan
    return x


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_ckpt")
    cwd = tmp_path_factory.mktemp("cwd")
    cases = _build_cases(tmp)
    results = run_cli([(["eval", "--weights", path, "--quiet"], cwd) for path, _ in cases.values()])
    assert not list(cwd.iterdir()), "a refused checkpoint left files behind"
    return {name: (path, pattern, r) for (name, (path, pattern)), r in zip(cases.items(), results)}


CASES = ["build sets a storage type's dtype", "build grows a tensor with set_()", "build rewrites a record class",
         "5000-deep record chain", "list containing itself", "billion laughs", "torch._dynamo is not imported",
         "storage type outside the table", "_parameters is a list", "BatchNorm eps NaN",
         "storage smaller than the pickle says", "view past the end of its storage", "stride-0 view of 10^12 elements",
         "negative storage offset", "size of 2^70", "storage key is a billion laughs", "storage missing from the zip",
         "zip bomb storage (deflate 1000:1)", "members of 15:1 adding up past 8x the file", "data.pkl of 20 MB", "600,000 cheap opcodes", "shared-reference bomb in an unused config key",
         "encrypted member", "bzip2 member", "12,000 zip entries", "5 GB file", "a FIFO as --weights", "a folder as --weights"]


@ONE_WORKER
@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_refused_cleanly(outcomes, name):
    path, pattern, outcome = outcomes[name]
    outcome.assert_refused(pattern, names=str(path))


@ONE_WORKER
@pytest.mark.slow
def test_cases_cover_every_payload(outcomes):
    assert sorted(outcomes) == sorted(CASES)


@ONE_WORKER
@pytest.mark.slow
def test_refused_names_are_not_imported(outcomes):
    assert not [m for m in outcomes["torch._dynamo is not imported"][2].new_modules if m.startswith("torch._dynamo")]


# ---- proofs that the payloads fire under a trusting loader -------------------------------------------------
def test_billion_laughs_really_expands():
    pkl = state_dict(model=_laughs())
    assert len(pkl) < 1000
    assert _expanded_size(pickle.loads(pkl)["model"]) > 10 ** 9


@ONE_WORKER
@pytest.mark.slow
def test_zip_bomb_really_inflates(outcomes):
    path = outcomes["zip bomb storage (deflate 1000:1)"][0]
    info = zipfile.ZipFile(path).getinfo("archive/data/0")
    assert path.stat().st_size < 1 << 20 and info.file_size == 96 << 20


def test_tensor_setstate_really_grows_a_storage():
    """Tensor.__setstate__ (what BUILD calls on a tensor) is set_(): on a resizable 0-byte storage, as the old
    loader made for empty storages, it grows the tensor into 2^20 elements of uninitialised memory."""
    t = torch.empty(0)
    t.__setstate__((torch.empty(0).untyped_storage(), 0, (1 << 20,), (1,)))
    assert t.numel() == 1 << 20


def test_build_on_storage_type_really_sets_dtype():
    """Under a plain unpickler, the BUILD payload rewrites the dtype of the storage-type object the name
    resolves to (the old loader's _StorageType had a writable __dict__)."""
    class StorageType:
        def __init__(self):
            self.dtype = "float32"

    storage_type = StorageType()

    class Trusting(pickle.Unpickler):
        def find_class(self, module, name):
            return storage_type if name == "FloatStorage" else "float64"

    pkl = state_dict(w=G("torch", "FloatStorage") + EMPTY_DICT + S("dtype") + G("torch", "float64") + SETITEM + BUILD)
    Trusting(io.BytesIO(pkl)).load()
    assert storage_type.dtype == "float64"


# ---- the fast tier: the core refusals in-process, without the CLI subprocess ----------------------------
FAST = {
    "BUILD on a storage type": (state_dict(w=G("torch", "FloatStorage") + EMPTY_DICT + S("dtype")
                                           + G("torch", "float64") + SETITEM + BUILD), None, "sets the state"),
    "BUILD on a tensor": (state_dict(w=tensor("0", (0,), (1,)) + T(persid("0"), I(0), T(I(1 << 20)), T(I(1)))
                                     + BUILD), {"0": b""}, "sets the state of a Tensor"),
    "view overrun": (state_dict(w=tensor("0", (10,), (1,), numel=4)), {"0": bytes(16)}, "overruns storage"),
    "billion laughs": (state_dict(model=_laughs()), None, "more than 500000 objects"),
    "cycle": (state_dict(model=EMPTY_LIST + PUT(0) + GET(0) + APPEND), None, "contains itself"),
}


@pytest.mark.parametrize("name", list(FAST))
def test_core_refusals_in_process(tmp_path, name):
    from sw.checkpoint import read_torch_zip
    from sw.errors import CheckpointError

    pkl, storages, message = FAST[name]
    path = zip_checkpoint(tmp_path / "x.pt", pkl, storages)
    with pytest.raises(CheckpointError, match=message) as info:
        read_torch_zip(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
