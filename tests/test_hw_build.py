"""``yoloq hw build``: Verilog, $readmemh files and manifests for real YOLOv7 layers; Verilator lint."""

from __future__ import annotations

import json
import re

import pytest

from hw.lint import lint
from sw.cli import main
from sw.intref.contract import LayerContract
from sw.intref.stream import StreamLayout
from sw.checkpoint.artifact import load_quantized

# Every test elaborates PEs (Amaranth, yosys) for layers of a quantized YOLOv7 (tens of seconds to make).
pytestmark = pytest.mark.slow


def _layer_of(qm, granularity):
    return next(n for n, r in qm.layers.items() if r.qt is not None and r.granularity == granularity)


@pytest.fixture(scope="module")
def qm7(yolov7_pwlq_mix3):
    return load_quantized(yolov7_pwlq_mix3).extras["quantized"]


@pytest.mark.parametrize("granularity", ["cshape", "fshape"])
def test_build_yolov7_layer_lints_clean_and_agrees_with_quantizer(qm7, yolov7_pwlq_mix3, granularity, tmp_path):
    name = _layer_of(qm7, granularity)
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", name, "--lanes", "16",
                 "-o", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    verilog = tmp_path / manifest["verilog"]
    rc, messages = lint(verilog)
    assert rc == 0, messages
    rc, raw = lint(verilog, waivers=False)
    assert set(re.findall(r"%Warning-(\w+)", raw)) <= {"PROCASSINIT", "WIDTHEXPAND", "UNUSEDSIGNAL", "DECLFILENAME"}
    assert manifest["storage"]["agrees_with_quantizer"]
    assert manifest["pe"]["mode"] == ("lane" if granularity == "fshape" else "group")
    assert {p["name"] for p in manifest["ports"]} >= {"elements__payload", "elements__valid", "elements__ready",
                                                      "results__payload", "results__valid", "results__ready",
                                                      "params__en", "params__addr", "params__data", "clk", "rst"}
    payload = next(p for p in manifest["ports"] if p["name"] == "results__payload")
    assert payload["width"] == manifest["contract"]["acc_bits"]
    # the manifest's ports come from the PE's signature: they are exactly the Verilog module's
    source = verilog.read_text()
    top = source[source.index(f"\nmodule {manifest['module']}("):]
    declared = re.findall(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\w+)\s*;",
                          top[:top.index("\nendmodule")], re.M)
    assert sorted((p["name"], p["dir"], p["width"]) for p in manifest["ports"]) == \
        sorted((n, d, int(msb) + 1 if msb else 1) for d, msb, n in declared)


def test_memory_files_hold_the_layer(qm7, yolov7_pwlq_mix3, tmp_path):
    name = _layer_of(qm7, "cshape")
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", name, "--lanes", "8",
                 "-o", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    contract = LayerContract.from_record(name, qm7.layers[name].qt, 8, 16)
    words = [int(line, 16) for line in (tmp_path / "params.hex").read_text().split()]
    assert len(words) == contract.num_groups
    f, b = contract.fmt.scale_bits, contract.fmt.breakpoint_bits
    assert contract.fmt.zero_point_bits == 0 and b >= 1  # PWLQ: no zero-point, a breakpoint instead
    for g, w in enumerate(words):  # LSB first: scale[0], scale[1], breakpoint (unsigned)
        assert [(w >> (r * f)) & ((1 << f) - 1) for r in range(2)] == contract.scale_int[g].tolist()
        assert w >> (2 * f) == int(contract.breakpoint[g])
    layout = StreamLayout.build(contract, 8)
    lines = (tmp_path / "weights.hex").read_text().split()
    assert len(lines) == contract.shape[0] * layout.beats == contract.shape[0] * m["stream"]["beats_per_dot_product"]
    first = int(lines[0], 16)
    beat = layout.weight_beats(0)
    k = contract.fmt.weight_bits
    assert [((first >> (lane * k)) & ((1 << k) - 1)) for lane in range(8)] == [c & ((1 << k) - 1) for c in beat["code"][0]]


def test_build_all_layers_and_errors(qm7, yolov7_pwlq_mix3, tmp_path, capsys):
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", "model.999.conv",
                 "-o", str(tmp_path)]) == 2
    assert "no layer 'model.999.conv'" in capsys.readouterr().err
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", "model.0.conv",
                 "--lanes", "0", "-o", str(tmp_path)]) == 2
