"""Hostile quantized artifacts (.yqa): values range-checked against their declared widths, bounded reads,
integer version; and the integer contract refusing what does not fit a hardware field."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch

from hostile_harness import run_cli
from hostile_payloads import manifest, npy, rewrite_zip, tiny_model
from sw.checkpoint.artifact import save_quantized
from sw.errors import QuantizationError
from sw.intref.contract import LayerContract
from sw.quant.model import QuantSpec, quantize_model


# The tests that read this module's expensive fixture (a subprocess that imports torch and runs the CLI case after
# case: tens of seconds) are one xdist group: `make test` (--dist loadgroup) runs them on one worker, which makes
# the fixture once instead of once on each worker.
ONE_WORKER = pytest.mark.xdist_group("hostile_artifact")


def _quantized(path, method):
    spec = QuantSpec(method, 4, "filter", breakpoint="approx", include_detect=False)
    qm = quantize_model(tiny_model(), spec, progress=False)
    save_quantized(qm, path)
    return qm


def _array(path, entry) -> np.ndarray:
    with zipfile.ZipFile(path) as zf:
        return np.load(io.BytesIO(zf.read(entry)), allow_pickle=False)


def _set(path, entry, index, value):
    a = _array(path, entry).copy()
    a[index] = value
    return {entry: npy(a)}


def _npy_claiming(count: int) -> bytes:
    """A .npy whose header claims ``count`` float32 elements and whose body holds 4 bytes."""
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % count).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(4)


def _nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("yqa")
    return {m: (tmp / f"{m}.yqa", _quantized(tmp / f"{m}.yqa", m)) for m in ("affine", "symmetric", "pwlq")}


def _cases(artifacts, tmp):
    aff, _ = artifacts["affine"]
    sym, _ = artifacts["symmetric"]
    pw, _ = artifacts["pwlq"]
    layer = "model.0.conv"
    q = f"quant/{layer}"
    m = manifest(aff)
    bad_bits = dict(m, layers=[dict(m["layers"][0], bits="4")] + m["layers"][1:])
    big_shape = dict(m, layers=[dict(m["layers"][0], shape=[10 ** 9, 3, 6, 6])] + m["layers"][1:])
    text_mse = dict(m, layers=[dict(m["layers"][0], mse="0.1")] + m["layers"][1:])
    float_entry = next(n for n in zipfile.ZipFile(aff).namelist() if n.startswith("float/") and "bn.weight" in n)
    anchors = next(n for n in zipfile.ZipFile(aff).namelist() if n.endswith("anchors.npy"))
    c = {  # name: (source artifact, changes, regex)
        "affine zero-point 1000 at 4 bits": (aff, _set(aff, f"{q}/zero_point.npy", (0, 0), 1000),
                                             r"zero-points outside the 4-bit code range \(found .*1000\)"),
        "symmetric zero-point 3": (sym, _set(sym, f"{q}/zero_point.npy", (0, 0), 3), r"zero-points outside 0"),
        "PWLQ centre zero-point 1": (pw, _set(pw, f"{q}/zero_point.npy", (0, 0), 1), r"zero-points outside 0"),
        "PWLQ tail zero-point 2^40": (pw, _set(pw, f"{q}/zero_point.npy", (0, 1), 1 << 40), r"zero-points outside 0"),
        "PWLQ negative breakpoint": (pw, _set(pw, f"{q}/breakpoint.npy", (0, 0), -0.5),
                                     r"breakpoints must be finite and non-negative"),
        "PWLQ NaN breakpoint": (pw, _set(pw, f"{q}/breakpoint.npy", (0, 0), np.nan),
                                r"breakpoints must be finite and non-negative"),
        "subnormal scale": (aff, _set(aff, f"{q}/scale.npy", (0, 0), 5e-324), r"scales must be finite, from 2\^-64"),
        "NaN scale": (aff, _set(aff, f"{q}/scale.npy", (0, 0), np.nan), r"scales must be finite"),
        "NaN BN weight": (aff, _set(aff, float_entry, 0, np.nan), r"holds NaN or infinite values"),
        "infinite anchor": (aff, _set(aff, anchors, (0, 0, 0), np.inf), r"anchors holds NaN or infinite values"),
        "version '1' (a string)": (aff, {"yoloq.json": json.dumps(dict(m, version="1")).encode()},
                                   r"artifact version '1' is not supported \(this yoloq reads version 2"),
        "bits '4' (a string)": (aff, {"yoloq.json": json.dumps(bad_bits).encode()}, r"invalid record"),
        "shape of 10^9 filters": (aff, {"yoloq.json": json.dumps(big_shape).encode()}, r"invalid record"),
        "mse '0.1' (a string)": (aff, {"yoloq.json": json.dumps(text_mse).encode()},
                                 r"layer entry 'model.0.conv': invalid record"),
        ".npy header claiming 10^12 elements": (aff, {f"{q}/scale.npy": _npy_claiming(10 ** 12)},
                                                r"claims 1000000000000 elements of 4 bytes, but holds 4 bytes"),
        "100000-deep JSON manifest": (aff, {"yoloq.json": _nested_json(100_000)}, r"not valid JSON \(RecursionError\)"),
        "100-deep JSON manifest": (aff, {"yoloq.json": _nested_json(100)}, r"nested more than 64 deep"),
        "codes outside 4 bits": (aff, _set(aff, f"{q}/codes.npy", (0, 0, 0, 0), 100), r"codes outside the 4-bit range"),
    }
    return {name: (rewrite_zip(src, tmp / f"bad{i}.yqa", changes), pattern)
            for i, (name, (src, changes, pattern)) in enumerate(c.items())}


@pytest.fixture(scope="module")
def outcomes(artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_yqa")
    cwd = tmp_path_factory.mktemp("cwd")
    cases = _cases(artifacts, tmp)
    argv = [["eval", "--weights", path, "--quiet"] for path, _ in cases.values()]
    hw_out = cwd / "hw"
    argv.append(["hw", "build", "--quantized", cases["affine zero-point 1000 at 4 bits"][0], "--layer",
                 "model.0.conv", "-o", hw_out])
    results = run_cli([(a, cwd) for a in argv])
    assert not list(cwd.iterdir()), "a refused artifact left files behind"
    named = {name: (path, pattern, r) for (name, (path, pattern)), r in zip(cases.items(), results)}
    named["hw build of zero-point 1000"] = (cases["affine zero-point 1000 at 4 bits"][0],
                                           r"zero-points outside the 4-bit code range", results[-1])
    return named


CASES = ["affine zero-point 1000 at 4 bits", "symmetric zero-point 3", "PWLQ centre zero-point 1",
         "PWLQ tail zero-point 2^40", "PWLQ negative breakpoint", "PWLQ NaN breakpoint", "subnormal scale", "NaN scale", "NaN BN weight", "infinite anchor",
         "version '1' (a string)", "bits '4' (a string)", "shape of 10^9 filters", "mse '0.1' (a string)",
         ".npy header claiming 10^12 elements", "100000-deep JSON manifest", "100-deep JSON manifest",
         "codes outside 4 bits", "hw build of zero-point 1000"]


@ONE_WORKER
@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_artifact_refused_cleanly(outcomes, name):
    path, pattern, outcome = outcomes[name]
    outcome.assert_refused(pattern, names=str(path))


@ONE_WORKER
@pytest.mark.slow
def test_untampered_artifacts_load(artifacts):
    """The payloads above are single edits of artifacts that do load: the edit is what is refused."""
    from sw.checkpoint import load_model

    for path, _ in artifacts.values():
        assert load_model(path).kind == "quantized"


@ONE_WORKER
@pytest.mark.slow
def test_hw_field_check_refuses_instead_of_truncating(artifacts):
    """An in-memory record (no artifact check on the way) with an affine zero-point beyond its 4-bit field is
    refused by the integer contract that hw build, synth and cosim use, naming the layer."""
    _, qm = artifacts["affine"]
    qt = qm.layers["model.0.conv"].qt
    bad = type(qt)(qt.shape, qt.method, qt.bits, qt.granularity, qt.codes, qt.region, qt.scale,
                   qt.zero_point.clone().index_fill_(0, torch.tensor([0]), 1000))
    LayerContract.from_record("model.0.conv", qt)  # the untouched record fits
    with pytest.raises(QuantizationError, match=r"model.0.conv: zero-points 1000..1000 do not fit|model.0.conv: zero-points .* do not fit"):
        LayerContract.from_record("model.0.conv", bad)
