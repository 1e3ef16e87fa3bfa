"""``yoloq hw build``: one PE module per kind of layer, each layer's $readmemh files, the manifest; Verilator lint."""

from __future__ import annotations

import json
import re

import pytest

from hw.build import build_model
from hw.config import PEConfig
from hw.lint import lint
from sw.cli import main
from sw.intref.contract import LayerContract
from sw.intref.stream import StreamLayout
from sw.checkpoint.artifact import load_quantized

# Every test elaborates PEs (Amaranth, yosys) for layers of a quantized YOLOv7 (tens of seconds to make). They are
# one xdist group: `make test` (--dist loadgroup) runs them on one worker, which builds the module's PEs once
# instead of once on each worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hw_build")]

LANES = 16


def _layers_of(qm, granularity, count=1):
    return [n for n, r in qm.layers.items() if r.qt is not None and r.granularity == granularity][:count]


@pytest.fixture(scope="module")
def qm7(yolov7_pwlq_mix3):
    return load_quantized(yolov7_pwlq_mix3).extras["quantized"]


@pytest.fixture(scope="module")
def built(qm7, tmp_path_factory):
    """Two C-shape layers (group addressing) and one F-shape layer (lane addressing), built together."""
    names = _layers_of(qm7, "cshape", 2) + _layers_of(qm7, "fshape")
    out = tmp_path_factory.mktemp("hw-build")
    layers = [(LayerContract.from_record(n, qm7.layers[n].qt, 8, 16), qm7.layers[n].qt) for n in names]
    manifest = build_model(layers, LANES, out, lint=True, progress=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest
    return out, manifest, dict(layers=layers)


def test_one_module_per_kind_of_layer(built):
    out, manifest, _ = built
    modules = {m["module"]: m for m in manifest["modules"]}
    assert [m["pe"]["mode"] for m in manifest["modules"]] == ["group", "lane"]
    assert [e["module"] for e in manifest["layers"]] == [manifest["modules"][0]["module"]] * 2 + \
        [manifest["modules"][1]["module"]]
    for entry in manifest["layers"]:
        pe = modules[entry["module"]]["pe"]
        assert entry["layer"] in modules[entry["module"]]["layers"]
        # the shared PE is sized for every layer it runs
        assert pe["param_words"] >= entry["param_words"] and pe["acc_bits"] >= entry["contract"]["acc_bits"]
        assert entry["weight_beat_bits"] < pe["beat_bits"]  # a beat without its activations
        assert entry["storage"]["agrees_with_quantizer"]
        assert (out / entry["params_hex"]).is_file() and (out / entry["weights_hex"]).is_file()


def test_modules_lint_clean_and_ports_match_the_verilog(built):
    out, manifest, _ = built
    for module in manifest["modules"]:
        assert module["lint"]["exit_code"] == 0, module["lint"]["messages"]
        verilog = out / module["verilog"]
        rc, raw = lint(verilog, waivers=False)
        assert set(re.findall(r"%Warning-(\w+)", raw)) <= {"PROCASSINIT", "WIDTHEXPAND", "UNUSEDSIGNAL",
                                                           "DECLFILENAME"}
        assert {p["name"] for p in module["ports"]} >= {
            "elements__payload", "elements__valid", "elements__ready", "results__payload", "results__valid",
            "results__ready", "params__en", "params__addr", "params__data", "clk", "rst"}
        payload = next(p for p in module["ports"] if p["name"] == "results__payload")
        assert payload["width"] == module["pe"]["acc_bits"]
        # the manifest's ports come from the PE's signature: they are exactly the Verilog module's
        source = verilog.read_text()
        top = source[source.index(f"\nmodule {module['module']}("):]
        declared = re.findall(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\w+)\s*;",
                              top[:top.index("\nendmodule")], re.M)
        assert sorted((p["name"], p["dir"], p["width"]) for p in module["ports"]) == \
            sorted((n, d, int(msb) + 1 if msb else 1) for d, msb, n in declared)


def test_memory_files_hold_each_layer(built):
    out, manifest, extra = built
    modules = {m["module"]: m for m in manifest["modules"]}
    for (contract, _), entry in zip(extra["layers"], manifest["layers"]):
        layout = StreamLayout.build(contract, LANES)
        pe = modules[entry["module"]]["pe"]
        words = [int(line, 16) for line in (out / entry["params_hex"]).read_text().split()]
        assert len(words) == entry["param_words"] == layout.param_words
        f = contract.fmt.scale_bits
        assert contract.fmt.zero_point_bits == 0 and contract.fmt.breakpoint_bits >= 1  # PWLQ: a breakpoint
        groups = pe["param_word_fields"]["groups_per_word"]
        group_bits = sum(fl["bits"] * (fl["count"] or 1) for fl in pe["param_word_fields"]["group_fields"])
        for g in range(contract.num_groups):  # LSB first: scale[0], scale[1], breakpoint (unsigned)
            w = (words[g // groups] >> (g % groups * group_bits)) & ((1 << group_bits) - 1)
            assert [(w >> (r * f)) & ((1 << f) - 1) for r in range(2)] == contract.scale_int[g].tolist()
            assert w >> (2 * f) == int(contract.breakpoint[g])
        lines = (out / entry["weights_hex"]).read_text().split()
        assert len(lines) == contract.shape[0] * layout.beats == contract.shape[0] * \
            entry["stream"]["beats_per_dot_product"]
        first, beat, k = int(lines[0], 16), layout.weight_beats(0), contract.fmt.weight_bits
        assert [((first >> (lane * k)) & ((1 << k) - 1)) for lane in range(LANES)] == \
            [c & ((1 << k) - 1) for c in beat["code"][0]]
        assert entry["storage"]["agrees_with_quantizer"]


def test_cli_builds_one_layer_and_refuses_bad_input(qm7, yolov7_pwlq_mix3, tmp_path, capsys):
    name = _layers_of(qm7, "cshape")[0]
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", name, "--lanes", "8",
                 "-o", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["layer"] for e in m["layers"]] == [name] and len(m["modules"]) == 1 and m["lanes"] == 8
    assert (tmp_path / m["modules"][0]["verilog"]).is_file()
    # a layer alone gets exactly its own PE
    own = PEConfig.for_layer(StreamLayout.build(LayerContract.from_record(name, qm7.layers[name].qt, 8, 16), 8))
    assert (m["modules"][0]["pe"]["param_words"], m["modules"][0]["pe"]["acc_bits"]) == \
        (own.param_words, own.acc_bits)
    assert f"{name}/params.hex" in capsys.readouterr().out
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", "model.999.conv",
                 "-o", str(tmp_path)]) == 2
    assert "no layer 'model.999.conv'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a usage error naming the flag, before anything is read
        main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", "model.0.conv",
              "--lanes", "0", "-o", str(tmp_path)])
    assert e.value.code == 2 and "argument --lanes: must be from 1 to 256" in capsys.readouterr().err
