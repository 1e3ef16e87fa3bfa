"""The RTL epilogue (hw.epilogue) in amaranth.sim: code for code equal to sw's LayerEpilogue.apply, at the
corners of its EpilogueFormat, with random parameters, under back-pressure; and its mutations caught."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth import Value
from amaranth.lib import data
from amaranth.sim import Simulator

from hw.epilogue import Epilogue, EpilogueConfig
from sim.faults import EPILOGUE_FAULTS
from sw.intref.epilogue import EpilogueFormat, LayerEpilogue

from amaranth_bench import cycles_until


def random_epilogue(fmt: EpilogueFormat, channels: int, seed: int) -> LayerEpilogue:
    """Random parameters over their whole fields (channel 0 and 1 at the format's corners) and a random table."""
    g = torch.Generator().manual_seed(seed)

    def rand(lo, hi, n):
        return torch.randint(lo, hi + 1, (n,), generator=g, dtype=torch.int64)

    offset, mult, shift = rand(*fmt.offset_range, channels), rand(*fmt.multiplier_range, channels), \
        rand(*fmt.shift_range, channels)
    for c, corner in enumerate(fmt.corners()[:channels]):
        offset[c], mult[c], shift[c] = corner["offset"], corner["multiplier"], corner["shift"]
    if channels > 2:  # small shifts, where the rounding rule decides most codes
        shift[2] = 1
    table = rand(*fmt.out_range, fmt.lut_entries)
    return LayerEpilogue("model.1.conv", fmt, offset, mult, shift, table)


def stimulus(ep: LayerEpilogue, positions: int, seed: int) -> np.ndarray:
    """[positions, channels] accumulators: random, with the format's corners and values near a tie."""
    rng = np.random.default_rng(seed)
    lo, hi = ep.fmt.acc_range
    acc = rng.integers(lo, hi, size=(positions, ep.channels), endpoint=True, dtype=np.int64)
    for c, corner in enumerate(ep.fmt.corners()[:ep.channels]):
        acc[0, c] = corner["acc"]
    acc[1, :] = -ep.offset.numpy()       # t = 0
    acc[2, :] = 1 - ep.offset.numpy()    # t = 1, a tie at shift 1 with M = 1
    small = rng.integers(-64, 64, size=(max(0, positions - 3), ep.channels))
    acc[3:] = np.clip(small - ep.offset.numpy(), lo, hi)  # small t: the rounding and the table's middle
    return acc


def expected(ep: LayerEpilogue, acc: np.ndarray) -> tuple[list[int], list[int]]:
    a = torch.from_numpy(acc)
    codes = ep.apply(a, channel_dim=1).reshape(-1).tolist()
    sums = (a + ep.offset.view(1, -1)).reshape(-1).tolist()
    return codes, sums


def run(epi: Epilogue, acc: np.ndarray, channels: int, *, valid_p=1.0, ready_p=1.0, seed=0, load=None):
    """Stream ``acc`` (position-major) through ``epi``; the (code, sum) pairs it gives."""
    rng = random.Random(seed)
    flat = acc.reshape(-1).tolist()
    limit = 50 * len(flat) + 1000 + (sum(len(words) for words in load) if load else 0)
    got = []
    sim = Simulator(epi)
    sim.add_clock(1e-8)

    async def producer(ctx):
        ctx.set(epi.channels, channels)
        if load is not None:
            params, table = load
            for port, words in ((epi.params, params), (epi.table, table)):
                for addr, word in enumerate(words):
                    ctx.set(port.en, 1)
                    ctx.set(port.addr, addr)
                    ctx.set(Value.cast(port.data), word)
                    await ctx.tick()
                ctx.set(port.en, 0)
        for value in flat:
            while rng.random() > valid_p:
                ctx.set(epi.accumulators.valid, 0)
                await ctx.tick()
            ctx.set(epi.accumulators.payload, value)
            ctx.set(epi.accumulators.valid, 1)
            await ctx.tick().until(epi.accumulators.ready)
        ctx.set(epi.accumulators.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(got) < len(flat):
            ready = rng.random() <= ready_p
            ctx.set(epi.codes.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(epi.codes.valid, epi.codes.payload)
            cycles += 1
            if ready and valid:
                got.append((payload.code, payload.sum))
            assert cycles < limit, "the epilogue stopped producing codes"

    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return [c for c, _ in got], [s for _, s in got]


FORMATS = [EpilogueFormat(20, 14, 8), EpilogueFormat(12, 4, 4, 6, 5), EpilogueFormat(33, 30, 8, multiplier_bits=18)]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_epilogue_equals_layer_epilogue_apply(fmt):
    ep = random_epilogue(fmt, 5, seed=fmt.acc_bits)
    cfg = EpilogueConfig.for_layer(ep)
    acc = stimulus(ep, 40, seed=1)
    want_codes, want_sums = expected(ep, acc)
    codes, sums = run(Epilogue(cfg, cfg.param_init(ep), cfg.table_init(ep)), acc, ep.channels)
    assert codes == want_codes
    assert sums == want_sums


@pytest.mark.slow
def test_epilogue_under_back_pressure_with_parameters_loaded_through_its_ports():
    fmt = FORMATS[0]
    ep = random_epilogue(fmt, 3, seed=5)
    cfg = EpilogueConfig(fmt, 7)  # a deeper memory than the layer needs: the counter wraps at ``channels``
    acc = stimulus(ep, 10, seed=2)
    want_codes, want_sums = expected(ep, acc)
    codes, sums = run(Epilogue(cfg), acc, ep.channels, valid_p=0.6, ready_p=0.4, seed=3,
                      load=(cfg.param_init(ep), cfg.table_init(ep)))
    assert (codes, sums) == (want_codes, want_sums)


@pytest.mark.parametrize("fault", sorted(EPILOGUE_FAULTS))
def test_mutations_are_caught(fault):
    fmt = FORMATS[0]
    ep = random_epilogue(fmt, 5, seed=9)
    cfg = EpilogueConfig.for_layer(ep)
    acc = stimulus(ep, 12, seed=4)
    want_codes, _ = expected(ep, acc)
    epi = EPILOGUE_FAULTS[fault](cfg, cfg.param_init(ep), cfg.table_init(ep))
    codes, _ = run(epi, acc, ep.channels)
    assert sum(a != b for a, b in zip(codes, want_codes)) > 0


def test_parameter_word_is_the_contracts_param_fields():
    """The Amaranth view of the parameter word puts each field at the bits sw's packer does."""
    fmt = FORMATS[0]
    ep = random_epilogue(fmt, 4, seed=3)
    cfg = EpilogueConfig.for_layer(ep)
    assert cfg.param_layout.size == fmt.param_bits
    for c, word in enumerate(cfg.param_init(ep)):
        view = data.Const(cfg.param_layout, word)
        assert (view.offset, view.multiplier, view.shift) == (int(ep.offset[c]), int(ep.multiplier[c]),
                                                              int(ep.shift[c]))
    table = cfg.table_init(ep)
    assert len(table) == fmt.lut_entries
    assert [w - (1 << fmt.out_bits) if w >> (fmt.out_bits - 1) else w for w in table] == ep.table.tolist()


def test_a_layer_that_does_not_fit_is_refused():
    ep = random_epilogue(FORMATS[0], 3, seed=1)
    with pytest.raises(ValueError, match="does not fit"):
        EpilogueConfig(EpilogueFormat(20, 14, 8, pre_bits=10), 3).check_fits(ep)  # saturation bound differs
    with pytest.raises(ValueError, match="does not fit"):
        EpilogueConfig(FORMATS[0], 2).check_fits(ep)


def test_latency_matches_config():
    ep = random_epilogue(FORMATS[1], 2, seed=2)
    cfg = EpilogueConfig.for_layer(ep)
    epi = Epilogue(cfg, cfg.param_init(ep), cfg.table_init(ep))
    seen = {}
    sim = Simulator(epi)
    sim.add_clock(1e-8)

    async def bench(ctx):
        ctx.set(epi.channels, 2)
        ctx.set(epi.codes.ready, 1)
        ctx.set(epi.accumulators.payload, 5)
        ctx.set(epi.accumulators.valid, 1)
        await ctx.tick().until(epi.accumulators.ready)  # (ready is a register: low for a cycle after reset)
        ctx.set(epi.accumulators.valid, 0)
        seen["latency"] = await cycles_until(ctx, epi.codes.valid, 60)

    sim.add_testbench(bench)
    sim.run()
    assert seen["latency"] == cfg.latency


def test_saturation_and_rounding_at_the_pre_activation_bounds():
    """t M_c / 2^R_c right around +-2^(P-1) and +-2^P, where the narrowed value stops fitting (step 5)."""
    fmt = EpilogueFormat(20, 8, 4, pre_bits=6)
    big = 1 << fmt.pre_bits
    ep = LayerEpilogue("model.1.conv", fmt, torch.tensor([0, 0, 0, 5]), torch.tensor([1, 1, 3, 1]),
                       torch.tensor([1, 0, 2, 1]), torch.arange(fmt.lut_entries) % 16 - 8)
    near = [v + d for v in (big // 2, big, 2 * big, -big // 2, -big, -2 * big) for d in range(-3, 4)]
    acc = np.array([[v - int(k) for k in ep.offset] for v in near], dtype=np.int64)
    cfg = EpilogueConfig.for_layer(ep)
    codes, sums = run(Epilogue(cfg, cfg.param_init(ep), cfg.table_init(ep)), acc, ep.channels)
    assert (codes, sums) == expected(ep, acc)


def test_one_result_per_cycle_when_drained():
    """With ``codes.ready`` high the epilogue takes an accumulator every cycle: its registered ``ready``
    never falls (the queue's depth leaves room for the slot it holds back)."""
    ep = random_epilogue(FORMATS[0], 3, seed=6)
    cfg = EpilogueConfig.for_layer(ep)
    epi = Epilogue(cfg, cfg.param_init(ep), cfg.table_init(ep))
    n = 4 * cfg.result_fifo_depth
    seen = {"low": 0}
    sim = Simulator(epi)
    sim.add_clock(1e-8)

    async def bench(ctx):
        ctx.set(epi.channels, 3)
        ctx.set(epi.codes.ready, 1)
        ctx.set(epi.accumulators.valid, 1)
        await ctx.tick().until(epi.accumulators.ready)
        for _ in range(n):
            seen["low"] += not ctx.get(epi.accumulators.ready)
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert seen["low"] == 0


def test_credits_hold_when_the_consumer_stalls():
    """An accumulator offered every cycle against a consumer that is mostly not ready: the queue fills to
    its last slot again and again, so a credit bound one too loose (``ready`` or its late ``admit``) loses or
    overwrites codes."""
    ep = random_epilogue(FORMATS[0], 3, seed=8)
    cfg = EpilogueConfig.for_layer(ep)
    acc = stimulus(ep, cfg.result_fifo_depth, seed=5)  # 3 x depth results
    codes, sums = run(Epilogue(cfg, cfg.param_init(ep), cfg.table_init(ep)), acc, ep.channels, ready_p=0.15,
                      seed=4)
    assert (codes, sums) == expected(ep, acc)
