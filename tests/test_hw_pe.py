"""The processing element in amaranth.sim: bit-exact against sw's beat model, under back-pressure and reset."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth import ClockDomain, Module
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.config import PEConfig
from hw.pe import ProcessingElement
from sim.faults import FAULTS
from sw.intref.contract import LayerContract
from sw.intref.stream import StreamLayout, im2col, pe_accumulate
from sw.quant.quantizer import quantize_tensor

from amaranth_bench import cycles_until


def _layer(method, gran, bits=4, shape=(3, 5, 3, 3), act_bits=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g)
    return LayerContract.from_record("model.1.conv", quantize_tensor(w, method, bits, gran), act_bits, 16)


def _pe(layout):
    """The layer's exact PE, its parameters preloaded."""
    cfg = PEConfig.for_layer(layout)
    return ProcessingElement(cfg, cfg.param_init(layout))


def _stimulus(layout, positions=2, seed=0):
    """[(packed beat, ...)] per dot product and the expected accumulators, from sw."""
    g = torch.Generator().manual_seed(seed)
    c = layout.contract
    lo, hi = c.fmt.act_range
    x = torch.randint(lo, hi + 1, (1, c.shape[1], 3, 3), generator=g).double()
    cols = im2col(x, c, 1, 0, 0)[0][:positions]
    fmt = layout.stream_format()
    dots, expected = [], []
    for o in range(c.shape[0]):
        wb = layout.weight_beats(o)
        acts = layout.act_beats(cols)
        expected += pe_accumulate(layout, o, acts).tolist()
        for p in range(len(cols)):
            dots.append(fmt.pack({**wb, "act": acts[p]}))
    return dots, expected


def _run(pe, dots, expected, *, valid_p=1.0, ready_p=1.0, seed=0, load=None):
    rng = random.Random(seed)
    got, cycles = [], {"n": 0}
    sim = Simulator(pe)
    sim.add_clock(1e-8)

    async def producer(ctx):
        if load is not None:
            for addr, word in enumerate(load):
                ctx.set(pe.params.en, 1)
                ctx.set(pe.params.addr, addr)
                ctx.set(pe.params.data.as_value(), word)
                await ctx.tick()
            ctx.set(pe.params.en, 0)
        for beats in dots:
            for beat in beats:
                while rng.random() > valid_p:
                    ctx.set(pe.elements.valid, 0)
                    await ctx.tick()
                ctx.set(pe.elements.payload.as_value(), beat)
                ctx.set(pe.elements.valid, 1)
                await ctx.tick().until(pe.elements.ready)
        ctx.set(pe.elements.valid, 0)

    async def consumer(ctx):
        while len(got) < len(expected):
            ready = rng.random() <= ready_p
            ctx.set(pe.results.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(pe.results.valid, pe.results.payload)
            cycles["n"] += 1
            if ready and valid:  # a transfer happens at an edge where both were high
                got.append(payload)
            assert cycles["n"] < 20000, "PE stopped producing results"

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return got


def _param_dicts(cfg, layout):
    """The layer's parameter words as values of the PE's Amaranth word layout, built here from the contract."""
    c = layout.contract
    scale, zero_point = c.scale_int.tolist(), c.zero_point.tolist()

    def group(g):
        if g >= len(scale):  # lane mode: unused slots
            return {"scale": [0] * c.fmt.regions, **({"zero_point": 0} if c.fmt.zero_point_bits else {}),
                    **({"breakpoint": 0} if c.fmt.breakpoint_bits else {})}
        word = {"scale": scale[g]}
        if c.fmt.zero_point_bits:  # the stored zero-point (affine)
            word["zero_point"] = zero_point[g][0]
        if c.fmt.breakpoint_bits:  # PWLQ: the tails' breakpoint P
            word["breakpoint"] = int(c.breakpoint[g])
        return word
    if layout.mode == "group":
        return [group(g) for g in range(layout.param_words)]
    return [{"lanes": [group(w * cfg.lanes + i) for i in range(cfg.lanes)]} for w in range(layout.param_words)]


@pytest.mark.parametrize("method,gran,lanes", [("pwlq", "cshape", 4), ("pwlq", "fshape", 3), ("affine", "filter", 2),
                                               ("symmetric", "fshape", 4), ("affine", "fshape", 1)])
def test_amaranth_layouts_pack_like_sw(method, gran, lanes):
    """The PE's views (hw.config) of sw's field lists put every value at the bits sw's packer does."""
    layout = StreamLayout.build(_layer(method, gran, seed=6), lanes)
    cfg = PEConfig.for_layer(layout)
    dicts = _param_dicts(cfg, layout)
    assert [cfg.word_layout.const(d).as_value().value for d in dicts] == cfg.param_init(layout)
    assert cfg.word_layout.size == cfg.param_format.width
    wb = layout.weight_beats(2)
    acts = np.arange(layout.beats * lanes).reshape(layout.beats, lanes) % 256 - 128
    packed = cfg.stream.pack({**wb, "act": acts})
    for b in range(layout.beats):
        beat = {name: (v[b].tolist() if np.ndim(v) > 1 else int(v[b])) for name, v in {**wb, "act": acts}.items()}
        assert cfg.beat_layout.const(beat).as_value().value == packed[b]
        view = data.Const(cfg.beat_layout, packed[b])  # signedness: codes and activations read back signed
        assert [view.code[i] for i in range(lanes)] == beat["code"] and [view.act[i] for i in range(lanes)] == beat["act"]


CASES = [("pwlq", "cshape", 4), ("pwlq", "fshape", 4), ("affine", "filter", 3), ("symmetric", "channel", 2),
         ("symmetric-full", "layer", 1), ("affine", "fshape", 8), ("pwlq", "filter", 16)]


@pytest.mark.parametrize("method,gran,lanes", CASES)
def test_pe_matches_sw_beat_model(method, gran, lanes):
    c = _layer(method, gran)
    layout = StreamLayout.build(c, lanes)
    dots, expected = _stimulus(layout)
    pe = _pe(layout)
    assert _run(pe, dots, expected) == expected


@pytest.mark.parametrize("method,gran,lanes", [("pwlq", "cshape", 4), ("pwlq", "fshape", 4), ("affine", "channel", 2)])
def test_pe_under_back_pressure_and_idle_cycles(method, gran, lanes):
    c = _layer(method, gran, seed=1)
    layout = StreamLayout.build(c, lanes)
    dots, expected = _stimulus(layout, seed=1)
    pe = _pe(layout)
    assert _run(pe, dots, expected, valid_p=0.6, ready_p=0.4, seed=3) == expected


def test_pe_parameters_loaded_through_write_port():
    c = _layer("pwlq", "cshape", seed=2)
    layout = StreamLayout.build(c, 4)
    cfg = PEConfig.for_layer(layout)
    dots, expected = _stimulus(layout, seed=2)
    words = cfg.param_init(layout)
    assert _run(ProcessingElement(cfg), dots, expected, load=words) == expected


def test_pe_latency_matches_config():
    c = _layer("affine", "filter")
    layout = StreamLayout.build(c, 4)
    cfg = PEConfig.for_layer(layout)
    pe = _pe(layout)
    dots, _ = _stimulus(layout, positions=1)
    seen = {}
    sim = Simulator(pe)
    sim.add_clock(1e-8)

    async def bench(ctx):
        ctx.set(pe.results.ready, 1)
        for beat in dots[0]:
            ctx.set(pe.elements.payload.as_value(), beat)
            ctx.set(pe.elements.valid, 1)
            await ctx.tick()
        ctx.set(pe.elements.valid, 0)
        seen["latency"] = await cycles_until(ctx, pe.results.valid, 40)

    sim.add_testbench(bench)
    sim.run()
    assert seen["latency"] == cfg.latency


def test_pe_reset_discards_partial_dot_product():
    c = _layer("pwlq", "cshape", seed=4)
    layout = StreamLayout.build(c, 4)
    pe = _pe(layout)
    dots, expected = _stimulus(layout, seed=4)
    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    top.submodules.pe = pe
    got = []
    sim = Simulator(top)
    sim.add_clock(1e-8, domain="sync")

    async def bench(ctx):
        ctx.set(pe.results.ready, 1)
        for beat in dots[1][:-1]:  # a dot product cut short by a reset...
            ctx.set(pe.elements.payload.as_value(), beat)
            ctx.set(pe.elements.valid, 1)
            await ctx.tick()
        ctx.set(pe.elements.valid, 0)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        assert not ctx.get(pe.results.valid)
        for beat in dots[0]:  # ...leaves nothing behind: the next dot product is exact
            ctx.set(pe.elements.payload.as_value(), beat)
            ctx.set(pe.elements.valid, 1)
            await ctx.tick()
        ctx.set(pe.elements.valid, 0)
        for _ in range(40):
            if ctx.get(pe.results.valid):
                got.append(ctx.get(pe.results.payload))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert got == [expected[0]]


@pytest.mark.parametrize("fault", FAULTS)
def test_faulty_variants_are_caught(fault):
    c = _layer("affine", "cshape", shape=(3, 24, 3, 3), act_bits=10, seed=5)
    layout = StreamLayout.build(c, 4)
    dots, expected = _stimulus(layout, seed=5)
    cfg = PEConfig.for_layer(layout)
    pe = FAULTS[fault](cfg, cfg.param_init(layout))
    assert _run(pe, dots, expected) != expected
