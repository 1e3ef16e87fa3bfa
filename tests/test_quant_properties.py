"""Hypothesis properties of the quantizers over random groups, shapes and bit widths."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sw.quant import pwlq
from sw.quant.granularity import SINGLE, to_groups
from sw.quant.quantizer import quantize_tensor
from sw.quant.record import dequantize
from sw.quant.uniform import code_range

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)
shapes = st.tuples(st.integers(1, 5), st.integers(1, 5), st.sampled_from([1, 3]), st.sampled_from([1, 3]))


@st.composite
def weights(draw):
    shape = draw(shapes)
    return torch.from_numpy(draw(arrays(np.float32, shape, elements=finite)))


@settings(max_examples=150, deadline=None)
@given(w=weights(), bits=st.integers(2, 8), gran=st.sampled_from(SINGLE),
       method=st.sampled_from(["affine", "symmetric", "symmetric-full", "pwlq"]))
def test_codes_in_range_and_finite(w, bits, gran, method):
    qt = quantize_tensor(w, method, bits, gran)
    lo, hi = code_range(bits, restricted=method == "symmetric")
    assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
    assert torch.isfinite(qt.scale).all() and (qt.scale > 0).all()
    assert torch.isfinite(dequantize(qt)).all()
    if method == "affine":
        assert int(qt.zero_point.min()) >= -(1 << (bits - 1)) and int(qt.zero_point.max()) < (1 << (bits - 1))
    if method == "pwlq":
        _, j = pwlq.unpack_tail(qt.codes.long()[qt.region], bits)
        assert j.numel() == 0 or (int(j.min()) >= 0 and int(j.max()) < 1 << (bits - 1))
        assert torch.isfinite(qt.breakpoint).all() and (qt.breakpoint >= 0).all()


def _half_step_bound(qt, w):
    """Per-weight step s of the grid that quantized it (centre or tail for PWLQ)."""
    g_codes = to_groups(torch.ones_like(w), qt.granularity)
    step = qt.scale[:, :1].expand_as(g_codes).clone()
    if qt.region is not None:
        tail = to_groups(qt.region, qt.granularity)
        step = torch.where(tail, qt.scale[:, 1:].expand_as(step), step)
    return step


@settings(max_examples=150, deadline=None)
@given(w=weights(), bits=st.integers(2, 8), gran=st.sampled_from(SINGLE),
       method=st.sampled_from(["affine", "symmetric-full", "pwlq"]))
def test_error_at_most_half_step_inside_clipping_range(w, bits, gran, method):
    """|w - w_hat| <= s/2 for every weight: these methods' clipping ranges cover the whole group."""
    qt = quantize_tensor(w, method, bits, gran)
    err = (to_groups(w.double(), gran) - to_groups(dequantize(qt, torch.float64), gran)).abs()
    bound = _half_step_bound(qt, w) / 2
    assert (err <= bound * (1 + 1e-6) + 1e-30).all(), float((err - bound).max())


@settings(max_examples=150, deadline=None)
@given(w=weights(), bits=st.integers(2, 8))
def test_symmetric_restricted_error_bound(w, bits):
    qt = quantize_tensor(w, "symmetric", bits, "filter")
    err = (to_groups(w.double(), "filter") - to_groups(dequantize(qt, torch.float64), "filter")).abs()
    assert (err <= qt.scale / 2 * (1 + 1e-6) + 1e-30).all()


@settings(max_examples=200, deadline=None)
@given(group=arrays(np.float32, st.integers(1, 300), elements=finite), bits=st.integers(2, 8))
def test_searched_pwlq_never_worse_than_full_range_symmetric(group, bits):
    w = torch.from_numpy(group).view(1, -1, 1, 1)
    pw = quantize_tensor(w, "pwlq", bits, "layer")
    sym = quantize_tensor(w, "symmetric-full", bits, "layer")
    err_pw = (w.double() - dequantize(pw, torch.float64)).square().sum()
    err_sym = (w.double() - dequantize(sym, torch.float64)).square().sum()
    assert err_pw <= err_sym * (1 + 1e-6) + 1e-30


@settings(max_examples=100, deadline=None)
@given(group=arrays(np.float32, st.integers(300, 3000), elements=finite), bits=st.integers(2, 8))
def test_search_on_large_groups_never_worse_than_symmetric(group, bits):
    """Large groups (every member scored by the compiled kernel) keep the guarantee: p = m is a candidate."""
    w = torch.from_numpy(group).view(1, -1, 1, 1).repeat(1, 1, 1, 1)
    g = to_groups(w, "layer")
    m = g.abs().amax(1, keepdim=True)
    p = pwlq.search_breakpoint(g, m, bits)
    assert pwlq.squared_error(g.abs(), m, p, bits) <= pwlq.squared_error(g.abs(), m, m, bits) * (1 + 1e-6) + 1e-30
