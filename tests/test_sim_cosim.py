"""cocotb co-simulation of the PE (sim/): bit-exact against sw on real YOLO layers and on edge cases.

Simulator tests fail, never skip, when Icarus or Verilator is missing (``make setup`` installs both).
Icarus runs everything; Verilator (slower to build) runs the representative subset.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from amaranth.lib import data

from hw.build import weight_words
from hw.config import PEConfig
from sim.capture import conv_input, image_paths, layer_case, receptive_fields, sample_positions
from sim.cosim import Options, cosimulate, plan_builds
from sim.faults import FAULTS
from sim.runner import SimulatorError, build_environment, check_simulator
from sim.stimulus import LayerCase, reference_accumulators
from sim.tb_pe import format_mismatch
from sw.cli import main
from sw.intref.contract import ActQuant, ContractFormat, LayerContract
from sw.intref.network import IntegerConv2d
from sw.intref.packing import bit_matrix, hex_lines, words_of
from sw.intref.stream import StreamLayout, im2col, pe_accumulate
from sw.checkpoint.artifact import load_quantized
from sw.quant.model import QuantSpec, quantize_layer
from sw.quant.quantizer import quantize_tensor

REPO = Path(__file__).resolve().parent.parent

LANES = 4  # small PEs build and simulate fastest; layouts still span several beats per dot product


def _contract(method, gran, bits=4, shape=(6, 5, 3, 3), seed=0, name="model.1.conv"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g)
    return LayerContract.from_record(name, quantize_tensor(w, method, bits, gran), 8, 16)


def _random_case(contract, positions=3, seed=0):
    """Full-range random activation codes, with the extremes in the first two positions."""
    lo, hi = contract.fmt.act_range
    g = torch.Generator().manual_seed(seed)
    cols = torch.randint(lo, hi + 1, (positions, contract.fmt.fan_in), generator=g).numpy().astype(np.int64)
    cols[0], cols[1 % positions] = lo, hi
    return LayerCase(contract, cols, reference_accumulators(contract, cols))


def _assert_exact(result, cases):
    """0 mismatches, every expected result present, every testbench passed."""
    assert result.mismatches == 0 and not result.problems, \
        [format_mismatch(r) for r in result.listed[:5]] + result.problems
    assert result.results == sum(c.expected.size for c in cases)
    assert result.macs == sum(c.macs for c in cases)
    assert all(b["passed"] for b in result.builds)


# ---- stimulus packing (no simulator) ---------------------------------------------------------------------------
@pytest.mark.parametrize("method,gran", [("pwlq", "cshape"), ("pwlq", "fshape"), ("affine", "filter"),
                                         ("symmetric", "fshape")])
def test_packing_is_streamformat_pack_and_hw_build_files(method, gran):
    c = _contract(method, gran, seed=3)
    layout = StreamLayout.build(c, LANES)
    cfg = PEConfig.for_layer(layout)
    fmt = layout.stream_format()
    case = _random_case(c, positions=2)
    w_fields, w_rows = layout.weight_fields(cfg.stream)
    a_fields, a_rows = layout.act_fields(case.columns, cfg.stream)
    w_words, a_words = words_of(bit_matrix(w_fields, w_rows)), words_of(bit_matrix(a_fields, a_rows))
    act_width = fmt.fmt.act_bits * LANES
    acts = layout.act_beats(case.columns)
    for p in range(2):
        for o in range(c.shape[0]):
            beats = fmt.pack({**layout.weight_beats(o), "act": acts[p]})
            rows = range(o * layout.beats, (o + 1) * layout.beats)
            assert beats == [(w_words[r] << act_width) | a_words[p * layout.beats + b] for b, r in enumerate(rows)]
    assert w_words == weight_words(layout)[0]  # the content of hw/build's weights.hex
    assert words_of(bit_matrix(*layout.param_fields(cfg.param_format))) == cfg.param_init(layout)
    lines = hex_lines(bit_matrix(w_fields, w_rows)).decode().split("\n")
    assert lines[-1] == "" and [int(v, 16) for v in lines[:-1]] == w_words
    assert {len(v) for v in lines[:-1]} == {-(-(fmt.width - act_width) // 4)}


def test_superset_pe_bounds_every_layer_and_packs_wider_fields():
    cs = [_contract("pwlq", "cshape", shape=(4, 3, 3, 3), seed=1),
          _contract("pwlq", "filter", shape=(8, 16, 3, 3), seed=2, name="model.2.conv")]
    builds = plan_builds([_random_case(c) for c in cs], LANES)
    assert len(builds) == 1
    cfg = builds[0].cfg
    assert cfg.acc_bits >= max(c.fmt.acc_bits for c in cs)
    assert cfg.fmt.breakpoint_bits == max(c.fmt.breakpoint_bits for c in cs)
    assert cfg.param_words == max(lay.param_words for _, lay in builds[0].items)
    for _, layout in builds[0].items:  # breakpoints zero-extend into the wider field
        for word, b in zip(cfg.param_init(layout), layout.contract.breakpoint.tolist()):
            assert data.Const(cfg.word_layout, word).breakpoint == b
    assert PEConfig.superset([lay for _, lay in builds[0].items]) == cfg
    assert len(plan_builds([_random_case(c) for c in cs], LANES, exact=True)) == 2


def test_testbench_hdl_is_held_to_the_pe(tmp_path, monkeypatch):
    """sim/hdl/yoloq_cosim_tb.v connects exactly the PE signature's ports and reads the program in order."""
    import sim.wrapper as wrapper

    cfg = PEConfig.for_layer(StreamLayout.build(_contract("pwlq", "cshape"), LANES))
    wrapper.check_testbench(cfg)
    text = wrapper.TESTBENCH_HDL.read_text()
    for broken in (text.replace(".params__en(p_en), ", ""),                 # a PE port left unconnected
                   text.replace("e_beats = entry[3*32", "e_beats = entry[5*32")    # program fields out of order
                       .replace("e_act_base = entry[5*32", "e_act_base = entry[3*32")):
        fake = tmp_path / "yoloq_cosim_tb.v"
        fake.write_text(broken)
        monkeypatch.setattr(wrapper, "TESTBENCH_HDL", fake)
        with pytest.raises(ValueError):
            wrapper.check_testbench(cfg)


@pytest.mark.slow
def test_waves_record_a_trace(tmp_path):
    cases = [_random_case(_contract("affine", "filter", shape=(2, 3, 3, 3)), positions=1)]
    result = cosimulate(cases, Options(sim="icarus", lanes=LANES, waves=tmp_path / "waves", progress=False))
    _assert_exact(result, cases)
    trace = tmp_path / "waves" / "build0.fst"
    assert result.builds[0]["waves"] == str(trace) and trace.stat().st_size > 1000


def test_the_build_child_imports_only_cocotbs_runner():
    """Every simulator build starts a child process (sim.runner.build); torch and amaranth, which sim.runner
    itself imports, would cost it about 2.5 CPU s each time."""
    probe = ("import sys; from sim.build_child import build_here; from cocotb_tools.runner import get_runner; "
             "print(sorted({'torch', 'amaranth', 'sw', 'hw'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout


@pytest.mark.parametrize("ccache, user, expected", [(True, None, "ccache"), (False, None, None), (True, "", "")])
def test_verilator_builds_use_ccache_when_present(tmp_path, monkeypatch, ccache, user, expected):
    """verilated.mk's OBJCACHE hook gets ccache when it is on PATH (the runtime files every build compiles are
    then compiled once); a value the user set, even empty (off), is kept; without ccache it stays unset."""
    if ccache:
        (tmp_path / "ccache").write_text("#!/bin/sh\nexec \"$@\"\n")
        (tmp_path / "ccache").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin" if ccache else "/nonexistent")
    if user is None:
        monkeypatch.delenv("OBJCACHE", raising=False)
    else:
        monkeypatch.setenv("OBJCACHE", user)
    env = build_environment("verilator")
    assert env.get("OBJCACHE") == expected
    assert "OBJCACHE" not in build_environment("icarus") or user is not None


def test_first_verilator_build_runs_alone_then_builds_run_in_parallel(monkeypatch):
    """With ccache, the first build fills the cache with Verilator's runtime objects before any other starts
    (sim.runner._first_build); after it, builds overlap (two threads meet at a barrier inside)."""
    import threading

    from sim import runner

    monkeypatch.setattr(runner, "_runtime_cached", False)
    env = {"OBJCACHE": "ccache"}
    events, inside, release = [], threading.Event(), threading.Event()

    def first():
        with runner._first_build("verilator", env):
            inside.set()
            release.wait(10)
            events.append("first done")

    def second():
        inside.wait(10)
        with runner._first_build("verilator", env):
            events.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    inside.wait(10)
    threads[1].join(0.3)  # it must still be waiting for the first build
    events.append("released")
    release.set()
    for t in threads:
        t.join(10)
    assert events == ["released", "first done", "second in"]

    barrier = threading.Barrier(2, timeout=10)  # broken (an error) unless both are inside at once

    def later():
        with runner._first_build("verilator", env):
            barrier.wait()

    pair = [threading.Thread(target=later) for _ in range(2)]
    for t in pair:
        t.start()
    for t in pair:
        t.join(15)
    assert not barrier.broken


def test_capture_windows_are_im2col_rows():
    c = _contract("affine", "cshape", shape=(3, 4, 3, 3))
    conv = torch.nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=False)
    x = torch.randn(1, 4, 9, 7)
    act = ActQuant.from_range(8, -0.3, 2.0)
    integer = IntegerConv2d(c, conv, act)
    where = sample_positions(c.name, 0, 5, 4, 6, seed=2)
    assert (0, 0) in where and len(set(where)) == 6
    cols = receptive_fields(act.quantize(x), integer, where)
    full = im2col(act.quantize(x), c, 2, 1, act.zero_point)[0]
    assert np.array_equal(cols, full[[y * 4 + xx for y, xx in where]])
    acc = integer.accumulate(x)
    assert np.array_equal(reference_accumulators(c, cols), np.stack([acc[0, :, y, xx].numpy() for y, xx in where]))
    layout = StreamLayout.build(c, 3)
    for o in range(3):
        assert np.array_equal(pe_accumulate(layout, o, layout.act_beats(cols)), acc[0, o].numpy().reshape(-1)[
            [y * 4 + xx for y, xx in where]])


# ---- edge cases (Icarus) ----------------------------------------------------------------------------------------
def _corner_contract(method, gran, k, shape, name):
    """A layer whose every product sits at a corner of the contract's intervals: codes, zero-points and
    breakpoints at their extremes, every scale 2^F - 1. Output channel 0 takes the weight range's low end,
    channel 1 (if any) its high end."""
    pwlq = method == "pwlq"
    zbits = {"affine": k, "pwlq": 0, "symmetric": 0}[method]
    n = shape[1] * shape[2] * shape[3]
    fmt = ContractFormat(k, pwlq, 8, 16, zbits, n, 18 if pwlq else 0)
    w_lo, w_hi = fmt.weight_range
    zlo, zhi = fmt.zero_point_range
    s_max, b_max = fmt.scale_range[1], fmt.breakpoint_range[1]
    # every (code, tail, zero-point) at once: one probe contract with a filter of one weight per combination
    combos = [(code, tail, z) for code in range(-(1 << (k - 1)), 1 << (k - 1))
              for tail in ((0, 1) if pwlq else (0,)) for z in range(zlo, zhi + 1)]
    code_of, tail_of, z_of = (torch.tensor(v, dtype=torch.int64) for v in zip(*combos))
    m = len(combos)
    probe = LayerContract("probe", (m, 1, 1, 1), "filter", fmt, 0, torch.full((m, 2 if pwlq else 1), s_max),
                          torch.zeros((m, 2), dtype=torch.int64) if pwlq else z_of.view(m, 1),
                          code_of.to(torch.int8).view(m, 1, 1, 1), tail_of.bool().view(m, 1, 1, 1) if pwlq else None,
                          torch.full((m,), b_max) if pwlq else None)
    found = {}
    for w, combo in zip(probe.weight_int().view(m).tolist(), combos):
        if w in (w_lo, w_hi) and w not in found:
            found[w] = combo
    assert set(found) == {w_lo, w_hi}
    o = shape[0]
    groups = {"filter": o, "fshape": n}[gran]
    ends = [found[w_lo], found[w_hi]]
    codes = torch.tensor([ends[min(i, 1)][0] for i in range(o)], dtype=torch.int8).view(o, 1, 1, 1).expand(shape)
    tails = torch.tensor([bool(ends[min(i, 1)][1]) for i in range(o)]).view(o, 1, 1, 1).expand(shape)
    if gran == "filter":
        zs = [ends[min(i, 1)][2] for i in range(o)]
    else:  # F-shape groups are shared by all filters: one output channel, so one zero-point per group
        assert o == 1
        zs = [ends[0][2]] * groups
    zp = torch.tensor([[0, 0] for _ in zs] if pwlq else [[z] for z in zs])
    scale = torch.full((groups, 2 if pwlq else 1), s_max)
    bp = torch.full((groups,), b_max) if pwlq else None
    return LayerContract(name, shape, gran, fmt, 0, scale, zp, codes.contiguous(), tails.contiguous() if pwlq else None,
                         bp)


@pytest.mark.slow
def test_adversarial_corner_at_the_accumulator_bound_exact_width():
    cases = []
    for i, (method, gran, k, shape) in enumerate([("affine", "filter", 8, (2, 8, 3, 3)),
                                                 ("pwlq", "filter", 4, (2, 5, 3, 3)),
                                                 ("pwlq", "fshape", 3, (1, 6, 3, 3)),
                                                 ("symmetric", "fshape", 5, (1, 7, 1, 1))]):
        c = _corner_contract(method, gran, k, shape, f"model.{i}.corner")
        lo, hi = c.fmt.act_range
        cols = np.array([[lo] * c.fmt.fan_in, [hi] * c.fmt.fan_in], dtype=np.int64)
        case = LayerCase(c, cols, reference_accumulators(c, cols))
        assert c.fmt.adversarial_corner()["acc"] in case.expected  # the end that sets acc_bits is reached...
        assert set(c.fmt.acc_range) <= set(case.expected.reshape(-1).tolist()) or c.shape[0] == 1
        assert np.abs(case.expected).max() >= 1 << (c.fmt.acc_bits - 2)  # ...and needs the top bit
        cases.append(case)
    result = cosimulate(cases, Options(sim="icarus", lanes=LANES, exact=True, progress=False))
    _assert_exact(result, cases)
    assert {b["acc_bits"] for b in result.builds} == {c.contract.fmt.acc_bits for c in cases}


@pytest.mark.slow
def test_every_code_width_granularity_mix_and_pwlq_region():
    specs = [("affine", "channel", 2, (4, 6, 1, 1)),       # channel-wise 1x1: groups of one element
             ("pwlq", "fshape", 3, (5, 4, 3, 3)),          # F-shape: one element per group, lane mode
             ("symmetric", "filter", 4, (4, 5, 3, 3)),
             ("pwlq", "cshape", 5, (4, 9, 3, 3)),
             ("symmetric-full", "layer", 6, (3, 4, 3, 3)),
             ("affine", "fshape", 7, (3, 3, 3, 3)),
             ("pwlq", "channel", 8, (4, 5, 1, 1)),         # PWLQ on groups of one element
             ("pwlq", "layer", 2, (3, 5, 3, 3))]
    cases = [_random_case(_contract(m, g, k, s, seed=i, name=f"model.{i}.conv"), seed=i)
             for i, (m, g, k, s) in enumerate(specs)]
    g = torch.Generator().manual_seed(9)
    for j, (mix, shape) in enumerate([("mix3", (6, 8, 3, 3)), ("mix3", (8, 6, 1, 1)), ("mix4", (6, 4, 1, 1)),
                                      ("mix4", (5, 7, 3, 3))]):
        w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g)
        qt = quantize_layer(f"model.{20 + j}.conv", w, QuantSpec("pwlq", 4, mix, channel_1x1="quantize"), 4).qt
        cases.append(_random_case(LayerContract.from_record(f"model.{20 + j}.conv", qt, 8, 16), seed=j))
    pwlq = [c.contract for c in cases if c.contract.fmt.pwlq]
    region = torch.cat([c.region.reshape(-1) for c in pwlq])
    codes = torch.cat([c.codes.reshape(-1) for c in pwlq])
    assert (~region).any() and (region & (codes < 0)).any() and (region & (codes >= 0)).any()  # centre, both tails
    assert {c.contract.granularity for c in cases} == {"layer", "filter", "channel", "fshape", "cshape"}
    assert {c.contract.fmt.weight_bits for c in cases} == set(range(2, 9))
    result = cosimulate(cases, Options(sim="icarus", lanes=LANES, seed=5, idle=96, stall=128, progress=False))
    _assert_exact(result, cases)


# ---- the representative subset, both simulators -----------------------------------------------------------------
@pytest.fixture(scope="module")
def real_layer_cases(yolov5n, yolov7_pwlq_mix3, coco_root):
    """A YOLOv5n layer (real weights, 4-bit PWLQ C-shape) and a YOLOv7 layer (generated weights, 4-bit PWLQ
    mix3: its first F-shape layer), with activations captured on a real COCO image."""
    image = image_paths(coco_root, 1)[0]
    v5 = copy.deepcopy(yolov5n).eval()
    name5 = "model.1.conv"
    conv5 = v5.conv_layers()[name5]
    c5 = LayerContract.from_record(name5, quantize_tensor(conv5.weight.detach(), "pwlq", 4, "cshape"), 8, 16)
    qm7 = load_quantized(yolov7_pwlq_mix3).extras["quantized"]
    name7 = next(n for n, r in qm7.layers.items() if r.qt is not None and r.granularity == "fshape")
    conv7 = qm7.model.conv_layers()[name7]
    c7 = LayerContract.from_record(name7, qm7.layers[name7].qt, 8, qm7.spec.scale_bits)
    return [layer_case(c5, conv5, conv_input(v5, name5, image, 320), 3, seed=1),
            layer_case(c7, conv7, conv_input(qm7.model, name7, image, 320), 2, seed=1)]


@pytest.mark.slow
@pytest.mark.parametrize("sim", ["icarus", "verilator"])
def test_representative_subset(sim, real_layer_cases):
    cases = list(real_layer_cases)
    for i, gran in enumerate(["layer", "filter", "channel", "fshape", "cshape"]):
        for method in ("affine", "pwlq"):
            c = _contract(method, gran, shape=(4, 6, 3, 3), seed=i, name=f"model.{10 + i}.{method}")
            cases.append(_random_case(c, positions=2, seed=i))
    result = cosimulate(cases, Options(sim=sim, lanes=LANES, progress=False))
    _assert_exact(result, cases)
    assert len(result.builds) == 4  # {group, lane} x {uniform, PWLQ}


@pytest.mark.slow
def test_real_layers_on_exact_width_pes(real_layer_cases):
    result = cosimulate(real_layer_cases, Options(sim="icarus", lanes=8, exact=True, progress=False))
    _assert_exact(result, real_layer_cases)
    assert [b["acc_bits"] for b in result.builds] == [c.contract.fmt.acc_bits for c in real_layer_cases]


# ---- the mutation check -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method,gran", [("pwlq", "cshape"), ("affine", "fshape")])
def test_pe_with_the_ecp5_parameter_memory(method, gran):
    """The PE as ECP5 synthesis builds it (DP16KD parameter memory, loaded through its write port)."""
    cases = [_random_case(_contract(method, gran, shape=(6, 8, 3, 3), seed=7), positions=3, seed=7)]
    _assert_exact(cosimulate(cases, Options(sim="icarus", lanes=LANES, memory="ecp5", progress=False)), cases)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_mutant_pe_is_caught(fault, real_layer_cases):
    result = cosimulate(real_layer_cases[:1], Options(sim="icarus", lanes=LANES, fault=fault, progress=False))
    assert result.mismatches > 0 and not result.ok
    row = result.listed[0]
    assert set(row) == {"layer", "out_channel", "position", "expected", "got"} and row["expected"] != row["got"]
    assert row["layer"] == real_layer_cases[0].name
    text = format_mismatch(row)
    assert row["layer"] in text and f"output channel {row['out_channel']}" in text and "expected" in text


# ---- the command ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cosim_cli_on_a_yolov7_layer(yolov7_pwlq_mix3, tmp_path, capsys):
    qm7 = load_quantized(yolov7_pwlq_mix3).extras["quantized"]
    name = next(n for n, r in qm7.layers.items() if r.qt is not None and r.granularity == "cshape")
    out = tmp_path / "cosim.json"
    assert main(["hw", "cosim", "--quantized", str(yolov7_pwlq_mix3), "--layers", name, "--positions", "2",
                 "--calib-images", "1", "--img", "256", "--lanes", "8", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["mismatches"] == 0 and r["macs"] == 2 * qm7.layers[name].qt.numel
    assert r["seconds"] > 0 and r["macs_per_s"] == pytest.approx(r["macs"] / r["seconds"], rel=0.01)
    assert "MACs verified" in capsys.readouterr().out


@pytest.mark.slow  # the quantized YOLOv7 fixture takes half a minute to make
def test_cosim_cli_errors(yolov7_pwlq_mix3, tmp_path, monkeypatch, capsys):
    q = str(yolov7_pwlq_mix3)
    assert main(["hw", "cosim", "--quantized", q, "--positions", "0"]) == 2
    assert "--positions must be 'all' or at least 1" in capsys.readouterr().err
    assert main(["hw", "cosim", "--quantized", q, "--positions", "all"]) == 2
    assert "--positions all needs --unit layer" in capsys.readouterr().err
    assert main(["hw", "cosim", "--quantized", q, "--layers", "model.999.conv", "--quiet"]) == 2
    assert "no layer 'model.999.conv'" in capsys.readouterr().err
    assert main(["hw", "cosim"]) == 2
    assert "--weights" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path))  # no iverilog, no vvp
    assert main(["hw", "cosim", "--quantized", q, "--sim", "icarus"]) == 2
    assert "Icarus Verilog not found" in capsys.readouterr().err
    with pytest.raises(SimulatorError):
        check_simulator("icarus")
