"""The integer contract: exact integer convs, tight accumulator bounds, activation quantizers."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sw.errors import QuantizationError
from sw.intref.contract import ActQuant, LayerContract, scale_shift, signed_bits_for
from sw.intref.conv import FLOAT32_EXACT, FLOAT64_EXACT, ExactConv, integer_conv2d, integer_conv2d_int64
from sw.intref.network import IntegerConv2d
from sw.quant.record import dequantize
from sw.quant.quantizer import quantize_tensor


def _contract(method="pwlq", bits=4, gran="cshape", shape=(8, 16, 3, 3), act_bits=8, scale_bits=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g)
    return LayerContract.from_record("model.9.conv", quantize_tensor(w, method, bits, gran), act_bits, scale_bits)


@pytest.mark.parametrize("method", ["affine", "symmetric", "symmetric-full", "pwlq"])
@pytest.mark.parametrize("gran", ["layer", "filter", "channel", "fshape", "cshape"])
def test_weight_int_matches_elementwise_definition(method, gran):
    c = _contract(method, 4, gran, shape=(3, 4, 3, 3))
    w_int = c.weight_int()
    gid, reg = c.group_ids, c.region_index()
    for idx in itertools.product(*(range(s) for s in c.shape)):
        code = int(c.codes[idx])
        g, r = int(gid[idx]), int(reg[idx])
        if r == 1:  # PWLQ tail: sign bit, (k-1)-bit unsigned j, breakpoint P: sgn (j S_t + P)
            sign = -1 if code < 0 else 1
            j = code % (1 << (c.fmt.weight_bits - 1))
            expected = sign * (j * int(c.scale_int[g, 1]) + int(c.breakpoint[g]))
        else:
            expected = (code - int(c.zero_point[g, 0])) * int(c.scale_int[g, 0])
        assert int(w_int[idx]) == expected


def test_scale_shift_is_the_largest_that_fits():
    for scale_bits in (8, 12, 16):
        s = torch.tensor([[0.013], [0.0021], [1.7e-5]], dtype=torch.float64)
        e = scale_shift(s, scale_bits)
        assert round(float(s.max()) * 2.0 ** e) <= (1 << scale_bits) - 1
        assert round(float(s.max()) * 2.0 ** (e + 1)) > (1 << scale_bits) - 1
    c = _contract()
    assert int(c.scale_int.max()) <= (1 << c.fmt.scale_bits) - 1 and int(c.scale_int.min()) >= 0


def test_hardware_weights_differ_from_fake_quant_only_by_scale_rounding():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 16, 3, 3, generator=g)
    qt = quantize_tensor(w, "pwlq", 4, "cshape")
    c = LayerContract.from_record("l", qt, 8, 16)
    err = (c.weight_float() - dequantize(qt, torch.float64)).abs()
    tail = c.region_index() == 1  # tails also round the breakpoint: half an ulp more
    bound = (c.signed_diff().abs().double() + tail.double()) * 2.0 ** -c.shift / 2  # |u - z| * half an ulp of S
    assert (err <= bound * (1 + 1e-9)).all()


@pytest.mark.parametrize("method,bits,act_bits", [("pwlq", 4, 8), ("affine", 8, 10), ("symmetric", 2, 6),
                                                  ("pwlq", 8, 8), ("symmetric-full", 5, 8)])
def test_integer_conv_equals_independent_int64_conv(method, bits, act_bits):
    c = _contract(method, bits, "fshape", shape=(6, 5, 3, 3), act_bits=act_bits)
    g = torch.Generator().manual_seed(1)
    lo, hi = c.fmt.act_range
    x = torch.randint(lo, hi + 1, (2, 5, 9, 11), generator=g).double()
    for stride, padding in ((1, 1), (2, 1), (1, 0)):
        fast = integer_conv2d(x, c.weight_int(), stride, padding)
        assert fast.dtype == torch.int64
        assert torch.equal(fast, integer_conv2d_int64(x, c.weight_int(), stride, padding))


def test_integer_conv_splits_when_float64_would_round():
    g = torch.Generator().manual_seed(2)
    w = torch.randint(-(1 << 40), 1 << 40, (3, 8, 3, 3), generator=g)
    x = torch.randint(-512, 512, (1, 8, 6, 6), generator=g).double()
    assert 72 * (1 << 40) * 512 > FLOAT64_EXACT  # the plain float64 path would not be exact
    assert torch.equal(integer_conv2d(x, w, 1, 1), integer_conv2d_int64(x, w, 1, 1))


def _edge_weights(l1: int, shape=(2, 8, 3, 3), seed=3) -> torch.Tensor:
    """Mixed-sign integer weights whose every filter has L1 norm exactly ``l1``."""
    g = torch.Generator().manual_seed(seed)
    fan = shape[1] * shape[2] * shape[3]
    mag = torch.full(shape, l1 // fan, dtype=torch.int64).view(shape[0], -1)
    mag[:, 0] += l1 - (l1 // fan) * fan
    sign = torch.where(torch.rand(mag.shape, generator=g) < 0.5, -1, 1)
    return (mag * sign).view(shape)


@pytest.mark.parametrize("over", [0, 2])
def test_float32_conv_at_its_bound(over):
    """The float32 plan holds up to L1 * a = 2^24 - 1 exactly; just above (an odd sum, past 2^24) a single
    float32 conv rounds, so the plan splits the weights into digits, still float32, still exact."""
    a = 255
    l1 = (FLOAT32_EXACT - 1) // a + over  # 65793 * 255 = 2^24 - 1
    w = _edge_weights(l1)
    conv = ExactConv(w, a)
    assert conv.plan.dtype == torch.float32 and len(conv.plan.digits) == (2 if over else 1)
    # the corner: every product at +|W| a, so the output is L1 * a (odd, and above 2^24 when over)
    x = (torch.sign(w[0]) * a).double()[None]
    corner = int(integer_conv2d_int64(x, w)[0, 0, 0, 0])
    assert corner == l1 * a and (corner < FLOAT32_EXACT) == (not over)
    assert int(conv.int64(x)[0, 0, 0, 0]) == corner and float(conv.double(x)[0, 0, 0, 0]) == corner
    single = int(F.conv2d(x.float(), w.float())[0, 0, 0, 0])
    assert (single == corner) == (not over)  # a single float32 conv is exact exactly up to the bound
    # random inputs in [-a, a] with padding and strides equal the int64 reference
    g = torch.Generator().manual_seed(4)
    xr = torch.randint(-a, a + 1, (2, 8, 9, 7), generator=g).double()
    for stride, padding in ((1, 1), (2, 1), (1, 0)):
        assert torch.equal(conv.int64(xr, stride, padding), integer_conv2d_int64(xr, w, stride, padding))


def test_exact_conv_falls_back_to_float64(monkeypatch):
    """When float32 convs are not IEEE (TF32/bf16 asked for) or need too many digits, float64 digits."""
    import sw.intref.conv as conv_mod

    a = 255
    w = _edge_weights((FLOAT32_EXACT - 1) // a)
    x = torch.randint(-a, a + 1, (1, 8, 5, 5), generator=torch.Generator().manual_seed(5)).double()
    monkeypatch.setattr(conv_mod, "float32_conv_is_ieee", lambda: False)
    conv = ExactConv(w, a)
    assert conv.plan.dtype == torch.float32 and conv._plan_for(x).dtype == torch.float64
    assert torch.equal(conv.int64(x, 1, 1), integer_conv2d_int64(x, w, 1, 1))
    wide = ExactConv(torch.full((1, 8, 3, 3), 1 << 30, dtype=torch.int64), a)  # > 3 float32 digits
    assert wide.plan.dtype == torch.float64


@pytest.mark.parametrize("method,bits,act_bits,scale_bits,shape", [
    ("pwlq", 4, 8, 16, (4, 64, 3, 3)), ("affine", 4, 8, 16, (4, 64, 3, 3)), ("affine", 8, 10, 12, (2, 32, 1, 1)),
    ("symmetric", 2, 6, 8, (2, 3, 6, 6)), ("pwlq", 2, 8, 16, (2, 128, 1, 1)), ("symmetric-full", 6, 8, 16, (2, 7, 3, 3))])
def test_adversarial_input_reaches_the_accumulator_bound(method, bits, act_bits, scale_bits, shape):
    """N products at the extreme corner reach the derived bound exactly; one bit less would overflow."""
    c = _contract(method, bits, "filter", shape, act_bits, scale_bits)
    corner = c.fmt.adversarial_corner()
    n = c.fmt.fan_in
    w = torch.full((1,) + shape[1:], corner["weight"], dtype=torch.int64)
    x = torch.full((1, shape[1], shape[2], shape[3]), float(corner["act"]), dtype=torch.float64)
    acc = int(integer_conv2d(x, w, 1, 0).item())
    assert acc == corner["acc"] == n * corner["weight"] * corner["act"]
    lo, hi = c.fmt.acc_range
    assert lo <= acc <= hi and acc in (lo, hi)
    bits_needed = signed_bits_for(min(acc, 0), max(acc, 0))
    assert bits_needed == c.fmt.acc_bits
    half = 1 << (c.fmt.acc_bits - 2)  # range of one bit less: [-half, half - 1]
    assert not (-half <= acc <= half - 1)
    # and no combination of in-range factors exceeds the bound (PWLQ tails: +-(j S + B))
    dlo, dhi = c.fmt.diff_range
    for d, s, a in itertools.product((dlo, dhi), c.fmt.scale_range, c.fmt.act_range):
        assert lo <= n * d * s * a <= hi
    if c.fmt.pwlq:
        jmax = c.fmt.magnitude_range[1]
        for sgn, s, b, a in itertools.product((-1, 1), c.fmt.scale_range, c.fmt.breakpoint_range, c.fmt.act_range):
            assert lo <= n * sgn * (jmax * s + b) * a <= hi
    # the layer's real weights lie in the declared weight range
    wlo, whi = c.fmt.weight_range
    assert wlo <= int(c.weight_int().min()) and int(c.weight_int().max()) <= whi


def test_diff_range_covers_every_stored_parameter():
    for method in ("affine", "pwlq", "symmetric"):
        c = _contract(method)
        d = c.signed_diff()
        dlo, dhi = c.fmt.diff_range
        assert dlo <= int(d.min()) and int(d.max()) <= dhi
        zlo, zhi = c.fmt.zero_point_range
        assert zlo <= int(c.zero_point.min()) and int(c.zero_point.max()) <= zhi
        if method == "pwlq":
            blo, bhi = c.fmt.breakpoint_range
            assert blo <= int(c.breakpoint.min()) and int(c.breakpoint.max()) <= bhi
            assert int(c.breakpoint.max()) > bhi // 2  # the declared width is the least that holds them


def test_act_quant_zero_point_and_padding():
    q = ActQuant.from_range(8, -0.25, 6.0)
    assert q.zero_point == -128 + round(0.25 / q.scale)
    x = torch.tensor([-0.25, 0.0, 3.0, 6.0, 100.0])
    codes = q.quantize(x)
    assert codes[1].item() == q.zero_point  # 0.0 is exact
    assert codes[-1].item() == 127 and codes[0].item() == -128
    assert (q.dequantize(codes)[:4] - x[:4]).abs().max() <= q.scale / 2 + 1e-12
    with pytest.raises(QuantizationError, match="invalid activation quantizer"):
        ActQuant(8, 0.1, 300)


def test_integer_conv2d_module_epilogue():
    c = _contract("affine", 4, "cshape", shape=(5, 4, 3, 3))
    conv = torch.nn.Conv2d(4, 5, 3, 1, 1, bias=True)
    act = ActQuant.from_range(8, -0.3, 4.0)
    m = IntegerConv2d(c, conv, act)
    x = torch.rand(1, 4, 7, 7) * 4.5 - 0.3
    y = m(x)
    x_int = F.pad(act.quantize(x), [1] * 4, value=float(act.zero_point))
    acc = integer_conv2d_int64(x_int, c.weight_int(), 1, 0)
    expected = ((acc - act.zero_point * c.weight_int().sum((1, 2, 3)).view(1, -1, 1, 1)).double()
                * 2.0 ** -c.shift * act.scale).float() + conv.bias.detach().view(1, -1, 1, 1)
    assert torch.equal(y, expected)
    # keep_acc takes the accumulators themselves (padding with z_a); the output is the same to the bit
    m.keep_acc = True
    assert torch.equal(m(x), expected) and torch.equal(m.last_acc, acc)
    # and it approximates the float conv of the dequantized activations with hardware weights
    ref = F.conv2d(act.dequantize(act.quantize(x)), c.weight_float(), padding=1).float() + conv.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y, ref.detach(), rtol=1e-5, atol=1e-5)


def test_float32_convs_are_refused_when_onednn_is_off():
    """With oneDNN disabled torch may run float32 convs through NNPACK's rounding Winograd/FFT algorithms."""
    import torch.backends.mkldnn as mkldnn

    from sw.intref.conv import float32_conv_is_ieee

    assert float32_conv_is_ieee()  # the default settings of the CPU wheel
    with mkldnn.flags(enabled=False):
        assert not float32_conv_is_ieee() or not torch.backends.nnpack.is_available()
