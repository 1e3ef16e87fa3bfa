"""The fused exact-conv kernels (sw.intref.fused) against the torch paths they replace, tensor for tensor.

Every comparison is torch.equal (NaN positions compared apart): the kernels must give the torch path's bits,
at the bounds of the exactness argument (digit convs up to 2^24, recombined sums up to 2^53), on round-half
ties and beyond the clamps.
"""

from __future__ import annotations

import pytest
import torch

from sw.intref import fused
from sw.intref.contract import ActQuant
from sw.intref.conv import FLOAT32_EXACT, ExactConv, integer_conv2d_int64
from sw.intref.epilogue import FloatEpilogue
from sw.intref.network import IntegerConv2d

from test_intref_contract import _contract, _edge_weights


def _equal_with_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = torch.isnan(a)
    return a.dtype == b.dtype and torch.equal(nan, torch.isnan(b)) and torch.equal(a[~nan], b[~nan])


@pytest.mark.parametrize("scale", [0.5, 0.0123, 1 / 3, 3.0517578125e-05])
def test_quantize_equals_torch_division_rounding_and_clamp(fused_built, scale):
    g = torch.Generator().manual_seed(0)
    lo, hi = -40, 215  # centred codes of A = 8 with z_a = -88
    x = (torch.randn(4, 3, 17, 19, generator=g) * 200 * scale).float()
    ties = ((torch.arange(-300, 300, dtype=torch.float64) + 0.5) * scale).float()  # exact ties where s = 2^-n
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e38, -1e38,
                             torch.finfo(torch.float32).tiny, scale * (hi + 0.5), scale * (lo - 0.5)])
    for t in (x, ties, specials.float()):
        want = torch.div(t, torch.tensor([scale], dtype=torch.float64)).round_().clamp_(lo, hi).float()
        assert _equal_with_nan(fused.quantize_centred(t, scale, lo, hi), want)


def _digit_convs(digits: int, k: int, shape=(2, 5, 6, 7), seed=1) -> list[torch.Tensor]:
    """Integer-valued float32 digit convs up to +-(2^24 - 1), the top digit's so small that ``V`` stays below
    2^53; corners included."""
    g = torch.Generator().manual_seed(seed)
    top = FLOAT32_EXACT - 1
    high_top = min(top, ((1 << 53) - 1 - top * sum(1 << (k * j) for j in range(digits - 1))) >> (k * (digits - 1)))
    convs = []
    for j in range(digits):
        m = high_top if j == digits - 1 else top
        c = torch.randint(-m, m + 1, shape, generator=g, dtype=torch.int64)
        c.view(-1)[:4] = torch.tensor([m, -m, 0, 1])
        convs.append(c.float())
    return convs


def _recombined(convs: list[torch.Tensor], k: int) -> torch.Tensor:
    """ExactConv.values' recombination (torch)."""
    out = convs[0].double()
    for j, c in enumerate(convs[1:], 1):
        out.add_(c.double(), alpha=float(1 << (k * j)))
    return out


@pytest.mark.parametrize("digits,k", [(1, 0), (2, 13), (2, 29), (3, 14)])
def test_hw_output_equals_recombination_scale_and_bias(fused_built, digits, k):
    convs = _digit_convs(digits, k)
    v = _recombined(convs, k)
    assert float(v.abs().max()) < 2 ** 53
    bias = torch.randn(convs[0].shape[1], generator=torch.Generator().manual_seed(2))
    for scale in (2.0 ** -20 * 0.0173, 0.37, 2.0 ** -40):
        want = torch.mul(v, torch.tensor([scale], dtype=torch.float64), out=torch.empty(v.shape))
        assert torch.equal(fused.hw_output(convs, k, scale, None), want)
        assert torch.equal(fused.hw_output(convs, k, scale, bias), want + bias.view(1, -1, 1, 1))
    assert fused.hw_output(convs, k, 0.37, bias.double()) is None  # torch's sum would be float64: its path


@pytest.mark.parametrize("digits,k", [(1, 0), (2, 13), (3, 14)])
def test_codes_and_head_outputs_equal_the_float_epilogue_and_the_dequantization(fused_built, digits, k):
    convs = _digit_convs(digits, k)
    v = _recombined(convs, k)
    channels = convs[0].shape[1]
    g = torch.Generator().manual_seed(3)
    # S_c = M_c 2^-R_c and C_c multiples of 2^-R_c, as FloatEpilogue.of makes them; the index spans the clamps
    shift = torch.randint(20, 40, (channels,), generator=g)
    scale = (torch.randint(1, 1 << 12, (channels,), generator=g).double() * 2.0 ** -(shift + 40)).view(1, -1, 1, 1)
    const = (torch.randint(-(1 << 20), 1 << 20, (channels,), generator=g).double() * 2.0 ** -12).view(1, -1, 1, 1)
    table = torch.randint(-128, 128, (256,), generator=g).float()
    ep = FloatEpilogue(scale, const, 255, table)
    assert torch.equal(fused.codes_output(convs, k, ep), ep.apply(v))
    offset = torch.randint(-(1 << 30), 1 << 30, (channels,), generator=g).double().view(1, -1, 1, 1)
    dequant = torch.rand(channels, generator=g, dtype=torch.float64) * 1e-6
    want = (v if digits > 1 else convs[0]) + offset
    assert torch.equal(fused.head_output(convs, k, offset, dequant), want * dequant.view(1, -1, 1, 1))


@pytest.mark.parametrize("over", [0, 2])
def test_fused_recombination_of_the_float32_plan_at_its_bound(fused_built, over):
    """The edge of tests/test_intref_contract.py's float32 plan: the digit convs recombined by the kernel
    (scale 1, offset 0: V itself, float64) equal the int64 reference, at the corner L1 * a and at random."""
    a = 255
    w = _edge_weights((FLOAT32_EXACT - 1) // a + over)
    conv = ExactConv(w, a)
    x = torch.cat([(torch.sign(w[0]) * a).float()[None],
                   torch.randint(-a, a + 1, (1, 8, 3, 3), generator=torch.Generator().manual_seed(4)).float()])
    digits = conv.float32_digits(x)
    assert digits is not None and len(digits[0]) == (2 if over else 1)
    zero, one = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert torch.equal(fused.head_output(*digits, zero, one), integer_conv2d_int64(x, w).double())
    xr = torch.randint(-a, a + 1, (2, 8, 9, 7), generator=torch.Generator().manual_seed(5)).float()
    for stride, padding in ((1, 1), (2, 1)):
        got = fused.head_output(*conv.float32_digits(xr, stride, padding), zero, one)
        assert torch.equal(got, integer_conv2d_int64(xr, w, stride, padding).double())


@pytest.mark.parametrize("method,bits", [("pwlq", 4), ("affine", 8)])
def test_integer_conv2d_fused_equals_its_torch_path(fused_built, method, bits):
    """IntegerConv2d.forward with the kernels and without them: the same float32 outputs, with and without a
    bias, on inputs spanning and exceeding the activation range."""
    c = _contract(method, bits, "cshape", shape=(6, 16, 3, 3))
    act = ActQuant.from_range(8, -0.3, 4.0)
    x = torch.rand(2, 16, 11, 9, generator=torch.Generator().manual_seed(6)) * 5.0 - 0.6
    for bias in (True, False):
        m = IntegerConv2d(c, torch.nn.Conv2d(16, 6, 3, 2, 1, bias=bias), act)
        assert m.conv.float32_digits(m._quantize_centred(x), 2, 1) is not None  # the fused path is taken
        with fused.disabled():
            want = m(x)
        assert torch.equal(m(x), want)


@pytest.mark.slow  # quantizes and calibrates a generated model (20 s)
def test_hw_and_int_networks_equal_their_torch_paths(fused_built):
    """A generated YOLOv5n (PWLQ mix3): the HW model's outputs and every tensor of the integer network, with
    the kernels and without them."""
    from sw.intref.calibrate import calibrate_tensors
    from sw.intref.intnet import IntegerNetwork
    from sw.intref.network import build_hardware_model
    from sw.paths import data_file
    from sw.quant.model import QuantSpec, quantize_model
    from test_intnet import IMG, _image, _small

    qm = quantize_model(_small("yolov5n", 0.125), QuantSpec("pwlq", 4, "mix3"), progress=False)
    cal = calibrate_tensors(qm.model, data_file("coco128/images/train2017"), 8, images=2, img_size=IMG,
                            batch_size=2, progress=False)
    act = {n: q for n, q in cal.conv_inputs().items() if qm.layers[n].qt is not None}
    hw, _ = build_hardware_model(qm, act)
    net = IntegerNetwork(qm, cal)
    x = torch.cat([_image(4), _image(5)])
    with torch.no_grad():
        with fused.disabled():
            want_hw, want_int = hw(x), net.tensors(x)
        got_hw, got_int = hw(x), net.tensors(x)
    assert torch.equal(got_hw[0], want_hw[0]) and all(torch.equal(a, b) for a, b in zip(got_hw[1], want_hw[1]))
    assert want_int.keys() == got_int.keys() and all(torch.equal(got_int[t], want_int[t]) for t in want_int)
