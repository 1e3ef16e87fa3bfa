"""Hand-computed examples of every quantizer equation (the numbers are worked out in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from sw.quant import pwlq
from sw.quant.granularity import from_groups, group_index, num_groups, to_groups
from sw.quant.quantizer import quantize_tensor
from sw.quant.record import dequantize
from sw.quant.uniform import affine_params, code_range, quantize, symmetric_scale


def _w(vals):
    return torch.tensor(vals, dtype=torch.float32).view(1, -1, 1, 1)


def test_code_ranges():
    assert code_range(4) == (-8, 7)
    assert code_range(4, restricted=True) == (-7, 7)
    assert code_range(2) == (-2, 1)


def test_affine_example():
    # k=2: beta=-1, alpha=2 -> s = 3/3 = 1, z = -round(-1/1) - 2 = -1
    # q = clamp(round(w/s) + z, -2, 1): -1 -> -2, 0 -> -1, 0.5 -> round-half-even 0 -> -1, 2 -> 1
    # w_hat = s (q - z) = [-1, 0, 0, 2]
    s, z = affine_params(torch.tensor([[-1.0]]), torch.tensor([[2.0]]), 2)
    assert s.item() == 1.0 and z.item() == -1
    w = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    q = quantize(w, s, z, *code_range(2))
    assert q.tolist() == [[-2, -1, -1, 1]]
    qt = quantize_tensor(_w([-1.0, 0.0, 0.5, 2.0]), "affine", 2, "layer")
    assert qt.codes.flatten().tolist() == [-2, -1, -1, 1]
    assert dequantize(qt).flatten().tolist() == [-1.0, 0.0, 0.0, 2.0]


def test_affine_range_contains_zero():
    # all-positive group [0.1, 0.5], k=4: range widened to [0, 0.5], s = 0.5/15 = 1/30, z = -0 - 8 = -8
    # q(0.1) = round(3) - 8 = -5, q(0.5) = round(15) - 8 = 7; z stays a 4-bit code
    qt = quantize_tensor(_w([0.1, 0.5]), "affine", 4, "layer")
    assert qt.zero_point.item() == -8
    assert qt.scale.item() == pytest.approx(1 / 30, rel=1e-15)
    assert qt.codes.flatten().tolist() == [-5, 7]
    torch.testing.assert_close(dequantize(qt).flatten(), torch.tensor([0.1, 0.5]))


def test_symmetric_restricted_example():
    # k=3: m = 1.5, s = 1.5 / 3 = 0.5; round(w/s) = [-3, round(.52)=1, round(1.48)=1, round(2.4)=2]
    qt = quantize_tensor(_w([-1.5, 0.26, 0.74, 1.2]), "symmetric", 3, "layer")
    assert qt.scale.item() == 0.5 and qt.zero_point.item() == 0
    assert qt.codes.flatten().tolist() == [-3, 1, 1, 2]
    assert dequantize(qt).flatten().tolist() == [-1.5, 0.5, 0.5, 1.0]


def test_symmetric_full_range_example():
    # k=3: m = 1.75, s = 2 * 1.75 / 7 = 0.5; -3.5 -> -4 (half to even), 3.5 -> 4 clamped to 3, 0.6 -> 1
    qt = quantize_tensor(_w([-1.75, 1.75, 0.3]), "symmetric-full", 3, "layer")
    assert qt.scale.item() == 0.5
    assert qt.codes.flatten().tolist() == [-4, 3, 1]
    assert dequantize(qt).flatten().tolist() == [-2.0, 1.5, 0.5]
    assert symmetric_scale(torch.tensor([[1.75]]), 3, full_range=True).item() == 0.5


def test_pwlq_example():
    # k=3, m=4, p=2. Centre: s_c = 2*2/7 = 4/7, codes round(w/s_c) clamped to [-4, 3].
    #   -1.0 -> -1.75 -> -2;  0.2 -> 0.35 -> 0;  1.0 -> 1.75 -> 2
    # Tails: s_t = (4-2)/(2^2-1) = 2/3, z_t = -round(2/(2/3)) - 2 = -5, u in [-2, 1]:
    #   |-4| -> round(6) - 5 = 1  -> |w_hat| = 2/3 (1+5) = 4
    #   |3|  -> round(4.5)=4 - 5 = -1 -> |w_hat| = 2/3 (-1+5) = 8/3
    # Packed tail code (k=3): sign in bit 2, u in bits 1..0: -4 -> sign 1, u 1 -> -4+1 = -3; 3 -> sign 0, u -1 -> 3
    w = torch.tensor([[-4.0, -1.0, 0.2, 1.0, 3.0]])
    m, p = torch.tensor([[4.0]]), torch.tensor([[2.0]])
    s_c, s_t, z_t = pwlq.pwlq_params(m, p, 3)
    assert s_c.item() == pytest.approx(4 / 7) and s_t.item() == pytest.approx(2 / 3) and z_t.item() == -5
    codes, tail, s_c, s_t, z_t = pwlq.quantize(w, m, p, 3)
    assert codes.tolist() == [[-3, -2, 0, 2, 3]]
    assert tail.tolist() == [[True, False, False, False, True]]
    w_hat = pwlq.dequantize(codes.long(), tail, s_c, s_t, z_t, 3)
    expected = [-4.0, -8 / 7, 0.0, 8 / 7, 8 / 3]
    assert w_hat.flatten().tolist() == pytest.approx(expected, rel=1e-12)
    assert pwlq.squared_error(w.abs(), m, p, 3).item() == pytest.approx(sum((a - b) ** 2 for a, b in zip(w[0].tolist(), expected)), rel=1e-5)


@pytest.mark.parametrize("bits", range(2, 9))
def test_pwlq_tail_packing_round_trips(bits):
    lo, hi = code_range(bits - 1)
    u = torch.arange(lo, hi + 1).repeat(2)
    neg = torch.tensor([False] * (hi - lo + 1) + [True] * (hi - lo + 1))
    code = pwlq.pack_tail(neg, u, bits)
    assert int(code.min()) >= -(1 << (bits - 1)) and int(code.max()) < (1 << (bits - 1))
    assert len(set(code.tolist())) == len(code)
    neg2, u2 = pwlq.unpack_tail(code, bits)
    assert torch.equal(neg2, neg) and torch.equal(u2, u)


def test_pwlq_approx_breakpoint():
    # p / sigma = ln(0.8614 m / sigma + 0.6079): sigma = 0.5, m = 1.5 -> p = 0.5 ln(0.8614*3 + 0.6079)
    p = pwlq.approx_breakpoint(torch.tensor([[1.5]]), torch.tensor([[0.5]]))
    assert p.item() == pytest.approx(0.5 * math.log(0.8614 * 3 + 0.6079))
    # sigma = 0 (one weight): p = m
    assert pwlq.approx_breakpoint(torch.tensor([[2.0]]), torch.tensor([[0.0]])).item() == 2.0


@pytest.mark.parametrize("dist", [torch.distributions.Laplace(0.0, 1.0), torch.distributions.Normal(0.0, 1.0),
                                  torch.distributions.StudentT(4.0)])
def test_pwlq_search_is_close_to_exhaustive(dist):
    torch.manual_seed(0)
    w = dist.sample((200, 257))
    m = w.abs().amax(1, keepdim=True)
    p = pwlq.search_breakpoint(w, m, 4)
    got = pwlq.squared_error(w.abs(), m, p, 4)
    grid = torch.linspace(0.0125, 1.0, 80, dtype=torch.float64)
    brute = torch.stack([pwlq.squared_error(w.abs(), m, m * f, 4) for f in grid], 1).min(1).values
    assert got.sum() <= brute.sum() * 1.03  # within 3% of an 80-point exhaustive search in total
    sym = pwlq.squared_error(w.abs(), m, m, 4)
    assert got.sum() < 0.8 * sym.sum()  # and PWLQ really pays off on such groups
    assert (0 < p).all() and (p <= m).all()


W = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)


@pytest.mark.parametrize("gran, groups, members", [
    ("layer", 1, 24), ("filter", 2, 12), ("channel", 6, 4), ("fshape", 12, 2), ("cshape", 8, 3)])
def test_granularity_groups(gran, groups, members):
    g = to_groups(W, gran)
    assert g.shape == (groups, members) and num_groups(W.shape, gran) == groups
    assert torch.equal(from_groups(g, W.shape, gran), W)
    ids = group_index(W.shape, gran)
    for gid in range(groups):
        assert sorted(W[ids == gid].tolist()) == sorted(g[gid].tolist())


def test_fshape_and_cshape_members():
    # F-shape group (c=1, h=0, w=1) spans all filters; C-shape group (o=1, h=1, w=0) spans all input channels
    assert to_groups(W, "fshape")[1 * 4 + 0 * 2 + 1].tolist() == W[:, 1, 0, 1].tolist()
    assert to_groups(W, "cshape")[1 * 4 + 1 * 2 + 0].tolist() == W[1, :, 1, 0].tolist()


def test_one_by_one_conv_channel_groups_are_single_weights():
    w = torch.randn(8, 4, 1, 1)
    assert to_groups(w, "channel").shape == (32, 1)
