"""The layer unit (hw.layer_unit: PE then epilogue) in amaranth.sim, and its build (hw.layer_build): a real
quantized layer's beats in, code for code what sw's LayerEpilogue.apply makes of sw's accumulators."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from hw.config import PEConfig
from hw.epilogue import EpilogueConfig
from hw.layer_unit import LayerUnit, LayerUnitConfig, RegisterSlice
from sw.intref.contract import ActQuant, LayerContract
from sw.intref.epilogue import derive_epilogue
from sw.intref.stream import StreamLayout, im2col, pe_accumulate
from sw.quant.quantizer import quantize_tensor

from amaranth_bench import cycles_until


def layer(method="pwlq", gran="cshape", shape=(6, 5, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.1
    qt = quantize_tensor(w, method, 4, gran)
    contract = LayerContract.from_record("model.1.conv", qt, 8, 16)
    act_in, out = ActQuant(8, 0.03, -110), ActQuant(8, 0.02, -100)
    bias = torch.randn(shape[0], generator=g) * 0.3
    # a pre-activation scale that puts typical accumulators over the code range, as calibration would
    pre_scale = 2.0 ** -contract.shift * act_in.scale * 2.0 ** (contract.fmt.acc_bits - 14)
    return contract, qt, derive_epilogue(contract, act_in, bias, pre_scale, out, "silu")


def stimulus(layout: StreamLayout, positions: int, seed: int):
    """Packed beats per dot product (position-major, then output channel) and sw's accumulators [P, o]."""
    g = torch.Generator().manual_seed(seed)
    c = layout.contract
    lo, hi = c.fmt.act_range
    x = torch.randint(lo, hi + 1, (1, c.shape[1], 4, 4), generator=g).double()
    cols = im2col(x, c, 1, 0, 0)[0][:positions]
    acts = layout.act_beats(cols)
    fmt = layout.stream_format()
    acc = np.stack([np.asarray(pe_accumulate(layout, o, acts), dtype=np.int64) for o in range(c.shape[0])], axis=1)
    dots = [fmt.pack({**layout.weight_beats(o), "act": acts[p]}) for p in range(len(cols)) for o in range(c.shape[0])]
    return dots, acc


def run(unit: LayerUnit, dots, count: int, channels: int, *, valid_p=1.0, ready_p=1.0, seed=0):
    rng = random.Random(seed)
    got = []
    sim = Simulator(unit)
    sim.add_clock(1e-8)

    async def producer(ctx):
        ctx.set(unit.channels, channels)
        for beats in dots:
            for beat in beats:
                while rng.random() > valid_p:
                    ctx.set(unit.elements.valid, 0)
                    await ctx.tick()
                ctx.set(unit.elements.payload.as_value(), beat)
                ctx.set(unit.elements.valid, 1)
                await ctx.tick().until(unit.elements.ready)
        ctx.set(unit.elements.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(got) < count:
            ready = rng.random() <= ready_p
            ctx.set(unit.outputs.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(unit.outputs.valid, unit.outputs.payload)
            cycles += 1
            if ready and valid:
                got.append((payload.code, payload.sum))
            assert cycles < 20000, "the layer unit stopped producing codes"

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return got


def unit_for(contract, ep, lanes):
    layout = StreamLayout.build(contract, lanes)
    cfg = LayerUnitConfig(PEConfig.for_layer(layout), EpilogueConfig.for_layer(ep))
    unit = LayerUnit(cfg, cfg.pe.param_init(layout), cfg.epilogue.param_init(ep), cfg.epilogue.table_init(ep))
    return layout, cfg, unit


@pytest.mark.slow
@pytest.mark.parametrize("method,gran,lanes,valid_p,ready_p", [("pwlq", "cshape", 4, 1.0, 1.0),
                                                               ("affine", "fshape", 3, 0.7, 0.4)])
def test_layer_unit_equals_sw(method, gran, lanes, valid_p, ready_p):
    contract, _, ep = layer(method, gran)
    layout, _, unit = unit_for(contract, ep, lanes)
    dots, acc = stimulus(layout, 6, seed=1)
    got = run(unit, dots, acc.size, ep.channels, valid_p=valid_p, ready_p=ready_p, seed=2)
    want_codes = ep.apply(torch.from_numpy(acc), channel_dim=1).reshape(-1).tolist()
    want_sums = (torch.from_numpy(acc) + ep.offset.view(1, -1)).reshape(-1).tolist()
    assert [c for c, _ in got] == want_codes
    assert [s for _, s in got] == want_sums
    assert len(set(want_codes)) > 3  # the stimulus exercises the table, not one saturated code


def test_layer_unit_latency_matches_config():
    """Cycles from a dot product's last beat to its code: the PE's, the register slice's and the epilogue's."""
    contract, _, ep = layer()
    layout, cfg, unit = unit_for(contract, ep, 4)
    dots, _ = stimulus(layout, 1, seed=0)
    seen = {}
    sim = Simulator(unit)
    sim.add_clock(1e-8)

    async def bench(ctx):
        ctx.set(unit.channels, ep.channels)
        ctx.set(unit.outputs.ready, 1)
        for beat in dots[0]:
            ctx.set(unit.elements.payload.as_value(), beat)
            ctx.set(unit.elements.valid, 1)
            await ctx.tick()
        ctx.set(unit.elements.valid, 0)
        seen["latency"] = await cycles_until(ctx, unit.outputs.valid, 100)

    sim.add_testbench(bench)
    sim.run()
    assert seen["latency"] == cfg.latency == cfg.pe.latency + 1 + cfg.epilogue.latency


@pytest.mark.slow
def test_layer_unit_build_lints_clean_and_its_files_hold_the_layer(tmp_path):
    import re

    from hw.layer_build import build_layer_unit
    from hw.lint import lint

    contract, qt, ep = layer("pwlq", "cshape", shape=(8, 6, 3, 3))
    manifest = build_layer_unit(contract, qt, ep, 4, tmp_path)
    rc, messages = lint(tmp_path / manifest["verilog"])
    assert rc == 0, messages
    rc, raw = lint(tmp_path / manifest["verilog"], waivers=False)
    assert set(re.findall(r"%Warning-(\w+)", raw)) <= {"PROCASSINIT", "WIDTHEXPAND", "UNUSEDSIGNAL", "DECLFILENAME"}
    cfg = EpilogueConfig.for_layer(ep)
    words = [int(line, 16) for line in (tmp_path / "epilogue.hex").read_text().split()]
    assert words == cfg.param_init(ep) and len(words) == contract.shape[0]
    table = [int(line, 16) for line in (tmp_path / "table.hex").read_text().split()]
    assert table == cfg.table_init(ep) and len(table) == 1 << ep.fmt.pre_bits

    assert manifest["unit"] == "layer" and manifest["latency_cycles"] == manifest["pe"]["latency_cycles"] + \
        RegisterSlice.LATENCY + manifest["epilogue"]["latency_cycles"]
    names = {p["name"] for p in manifest["ports"]}
    assert {"elements__payload", "outputs__payload", "epilogue_params__data", "table__data", "channels"} <= names
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["epilogue"]["param_word_fields"] == [
        {"name": "offset", "bits": ep.fmt.offset_bits, "signed": True, "count": None, "source": ""},
        {"name": "multiplier", "bits": ep.fmt.multiplier_bits, "signed": False, "count": None, "source": ""},
        {"name": "shift", "bits": ep.fmt.shift_bits, "signed": False, "count": None, "source": ""}]


@pytest.mark.slow
def test_hw_build_unit_layer_cli(yolov7_pwlq_mix3, tmp_path):
    """`yoloq hw build --unit layer`: the epilogue comes from the integer network, its files hold it."""
    from sw.checkpoint.artifact import load_quantized
    from sw.cli import main

    qm = load_quantized(yolov7_pwlq_mix3).extras["quantized"]
    name = next(n for n, r in qm.layers.items() if r.qt is not None)
    assert main(["hw", "build", "--quantized", str(yolov7_pwlq_mix3), "--layer", name, "--unit", "layer",
                 "--calib-images", "2", "--img", "128", "-o", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["unit"] == "layer" and manifest["epilogue"]["activation"] == "silu"
    channels = manifest["contract"]["shape"][0]
    assert len((tmp_path / "epilogue.hex").read_text().split()) == channels == manifest["epilogue"]["channels"]
    assert len((tmp_path / "table.hex").read_text().split()) == manifest["epilogue"]["table_entries"]
