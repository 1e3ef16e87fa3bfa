"""The integer epilogue's contract (sw.intref.epilogue): widths at their edges, the rounding rule against
plain Python integers, the multiplier's precision and the activation table."""

import math
import random

import pytest
import torch

from sw.errors import QuantizationError
from sw.intref.contract import ActQuant, signed_bits_for
from sw.intref.epilogue import (EpilogueFormat, FloatEpilogue, LayerEpilogue, activation_table, multiplier_and_shift, requantize,
                                superset_epilogue_format)


def python_epilogue(acc, offset, mult, shift, pre_bits):
    """An independent reference in Python's unbounded integers: round half up, then saturate."""
    x = (acc + offset) * mult
    if shift:
        x = (x + (1 << (shift - 1))) // (1 << shift)
    return max(-(1 << (pre_bits - 1)), min((1 << (pre_bits - 1)) - 1, x))


FORMATS = [EpilogueFormat(24, 20, 8), EpilogueFormat(33, 30, 8, multiplier_bits=18), EpilogueFormat(12, 4, 4, 6, 5)]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_widths_hold_their_corners_and_one_bit_less_does_not(fmt):
    for c in fmt.corners():
        t = c["acc"] + c["offset"]
        prod = t * c["multiplier"]
        rounded = prod + (1 << (c["shift"] - 1))
        assert signed_bits_for(t, t) <= fmt.sum_bits and signed_bits_for(prod, prod) <= fmt.product_bits
        assert signed_bits_for(rounded, rounded) <= fmt.rounded_bits
    ends = [c["acc"] + c["offset"] for c in fmt.corners()]
    assert signed_bits_for(min(ends), max(ends)) == fmt.sum_bits  # tight: the corners need every bit
    prods = [e * fmt.multiplier_range[1] for e in ends]
    assert signed_bits_for(min(prods), max(prods)) == fmt.product_bits


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_requantize_equals_python_integers_at_the_edges_and_at_random(fmt):
    rng = random.Random(7)
    cases = [(c["acc"], c["offset"], c["multiplier"], c["shift"]) for c in fmt.corners()]
    for _ in range(3000):
        cases.append((rng.randint(*fmt.acc_range), rng.randint(*fmt.offset_range), rng.randint(*fmt.multiplier_range),
                      rng.randint(*fmt.shift_range)))
    for shift in range(1, 6):  # exact ties: t * M = (2j + 1) 2^(shift-1) rounds up
        cases += [((2 * j + 1) << (shift - 1), 0, 1, shift) for j in range(-4, 4)]
    acc, off, mult, sh = (torch.tensor(v, dtype=torch.int64) for v in zip(*cases))
    got = requantize(acc + off, mult, sh, fmt).tolist()
    assert got == [python_epilogue(*c, fmt.pre_bits) for c in cases]


def test_ties_round_up():
    fmt = EpilogueFormat(8, 4, 8)
    t = torch.tensor([-3, -1, 1, 3])  # * 1 >> 1: -1.5, -0.5, 0.5, 1.5
    assert requantize(t, torch.ones(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64), fmt).tolist() == [-1, 0, 1, 2]


@pytest.mark.parametrize("real", [3.1e-7, 0.0123, 0.5, 0.999999, 1.7, 123.4])
def test_multiplier_is_normalised_and_within_half_a_mantissa_step(real):
    fmt = EpilogueFormat(32, 20, 8)
    m, r = multiplier_and_shift(real, fmt)
    assert 1 << (fmt.multiplier_bits - 1) <= m <= fmt.multiplier_range[1]
    assert abs(m * 2.0 ** -r - real) <= 2.0 ** -r / 2
    assert abs(m * 2.0 ** -r / real - 1) <= 2.0 ** -(fmt.multiplier_bits - 1)


def test_multiplier_out_of_reach_is_refused():
    fmt = EpilogueFormat(12, 4, 8, multiplier_bits=4)
    with pytest.raises(QuantizationError):
        multiplier_and_shift(1000.0, fmt)
    with pytest.raises(QuantizationError):
        multiplier_and_shift(float("nan"), fmt)


def test_silu_table_is_the_consumers_code_of_silu():
    fmt = EpilogueFormat(20, 10, 8)
    out = ActQuant(8, 0.05, -100)
    table = activation_table("silu", 0.01, out, fmt)
    assert table.numel() == 1 << fmt.pre_bits
    for i in [0, 1, 1000, 2047, 2048, 2049, 3000, 4095]:
        x = (i - 2048) * 0.01
        want = max(-128, min(127, round(x / (1 + math.exp(-x)) / 0.05) - 100))
        assert int(table[i]) == want
    assert int(table[2048]) == out.zero_point  # the code 0 is the value 0, whose SiLU is 0


def test_layer_epilogue_refuses_values_that_do_not_fit_their_fields():
    fmt = EpilogueFormat(16, 4, 8)
    ok = dict(name="x", fmt=fmt, offset=torch.tensor([7, -8]), multiplier=torch.tensor([1, 2]),
              shift=torch.tensor([0, 3]), table=torch.zeros(fmt.lut_entries, dtype=torch.int64))
    LayerEpilogue(**ok)
    for key, bad in [("offset", torch.tensor([8, 0])), ("multiplier", torch.tensor([-1, 0])),
                     ("shift", torch.tensor([0, fmt.max_shift + 1]))]:
        with pytest.raises(QuantizationError, match="do not fit"):
            LayerEpilogue(**{**ok, key: bad})


def test_apply_goes_through_the_table():
    fmt = EpilogueFormat(16, 8, 4, pre_bits=5)
    table = torch.arange(32, dtype=torch.int64) // 4 - 4
    ep = LayerEpilogue("x", fmt, torch.tensor([0, 10]), torch.tensor([1, 1]), torch.tensor([0, 1]), table)
    acc = torch.tensor([[[5]], [[5]]]).view(1, 2, 1, 1)
    pre = [python_epilogue(5, 0, 1, 0, 5), python_epilogue(5, 10, 1, 1, 5)]
    assert ep.apply(acc).flatten().tolist() == [int(table[p + 16]) for p in pre]


def _one_per_channel(fmt, cases, seed=0):
    """A LayerEpilogue with one channel per (acc, offset, multiplier, shift) case and a random table."""
    g = torch.Generator().manual_seed(seed)
    acc, off, mult, sh = (torch.tensor(v, dtype=torch.int64) for v in zip(*cases))
    table = torch.randint(fmt.out_range[0], fmt.out_range[1] + 1, (fmt.lut_entries,), generator=g)
    return LayerEpilogue("x", fmt, off, mult, sh, table), acc.view(1, -1, 1, 1)


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_float_epilogue_equals_the_int64_epilogue(fmt):
    """FloatEpilogue (float64) gives LayerEpilogue.apply's codes at the format's corners, at exact ties and at
    random, for accumulators handed over less a per-channel centre."""
    rng = random.Random(8)
    top_shift = min(fmt.max_shift, 53 - fmt.pre_bits - 1)  # larger shifts leave the float64 bound: refused
    cases = [(c["acc"], c["offset"], c["multiplier"], min(c["shift"], top_shift)) for c in fmt.corners()]
    cases += [(rng.randint(*fmt.acc_range), rng.randint(*fmt.offset_range), rng.randint(*fmt.multiplier_range),
               rng.randint(0, top_shift)) for _ in range(2000)]
    cases += [(((2 * j + 1) << (r - 1)), 0, 1, r) for r in range(1, 6) for j in range(-4, 4)]  # ties
    ep, acc = _one_per_channel(fmt, cases)
    for centre in (torch.zeros(len(cases), dtype=torch.int64), acc.flatten() // 3):
        values = acc - centre.view(1, -1, 1, 1)
        fast = FloatEpilogue.of(ep, centre, values.abs().flatten())
        assert torch.equal(fast.apply(values.double()), ep.apply(acc).float())


@pytest.mark.parametrize("shift", [0, 1])
def test_float_epilogue_at_its_2_to_53_bound(shift):
    """FloatEpilogue accepts values up to the last bound below 2^53, exactly, and refuses one more."""
    fmt = EpilogueFormat(54, 2, 8, pre_bits=12, multiplier_bits=1)
    lo = fmt.pre_range[0]
    numer = ((1 << (shift - 1)) if shift else 0) - (lo << shift)  # K' M + half - lo 2^R with K' = 0, M = 1
    edge = (1 << 53) - 1 - numer
    ep, _ = _one_per_channel(fmt, [(0, 0, 1, shift)])
    centre = torch.zeros(1, dtype=torch.int64)
    assert FloatEpilogue.of(ep, centre, edge + 1) is None
    fast = FloatEpilogue.of(ep, centre, edge)
    acc = torch.tensor([-edge, -edge + 1, -4097, -1, 0, 1, 2047, 4095, edge - 1, edge]).view(1, 1, -1, 1)
    assert torch.equal(fast.apply(acc.double()), ep.apply(acc).float())


def test_superset_covers_each():
    a, b = EpilogueFormat(20, 12, 8), EpilogueFormat(24, 10, 8, multiplier_bits=12)
    s = superset_epilogue_format([a, b])
    for f in (a, b):
        assert s.acc_bits >= f.acc_bits and s.offset_bits >= f.offset_bits and s.max_shift >= f.max_shift


@pytest.mark.parametrize("method", ["pwlq", "affine"])
def test_derived_epilogue_tracks_the_float_epilogue(method):
    """On a real contract, the integer epilogue's output codes equal the consumer's quantization of the float
    epilogue (dequantized accumulator + bias, SiLU) to within one code (the pre-activation code's rounding)."""
    from sw.intref.contract import LayerContract
    from sw.intref.conv import integer_conv2d
    from sw.intref.epilogue import ACTIVATIONS, derive_epilogue
    from sw.quant.quantizer import quantize_tensor

    g = torch.Generator().manual_seed(3)
    c = LayerContract.from_record("l", quantize_tensor(torch.randn(8, 6, 3, 3, generator=g) * 0.1, method, 4,
                                                       "filter"), 8, 16)
    act_in, out = ActQuant(8, 0.03, -110), ActQuant(8, 0.02, -100)
    bias = torch.randn(8, generator=g) * 0.3
    x = torch.randint(-128, 128, (1, 6, 9, 9), generator=g).double()
    acc = integer_conv2d(x, c.weight_int(), 1, 0, act_max=128)
    y = (acc - act_in.zero_point * c.weight_int().sum((1, 2, 3)).view(1, -1, 1, 1)).double() * 2.0 ** -c.shift \
        * act_in.scale + bias.double().view(1, -1, 1, 1)
    pre_scale = float(y.abs().max()) / 2047
    ep = derive_epilogue(c, act_in, bias, pre_scale, out, "silu")
    got = ep.apply(acc)
    want = out.quantize(ACTIVATIONS["silu"](y)).to(torch.int64)
    assert got.dtype == torch.int64 and int((got - want).abs().max()) <= 1
    assert float((got == want).double().mean()) > 0.9
