"""The compiled PWLQ search (sw.quant.pwlq_kernel.search) against its definition, the torch path
(sw.quant.pwlq._search_rows): the same breakpoints, compared with ==, on real YOLOv5n layers at every granularity
and k = 3, 4, 6, degenerate groups included; and the kernel's group statistics against torch's own."""

from __future__ import annotations

import contextlib

import pytest
import torch

from sw.models import to_deploy
from sw.quant import pwlq, pwlq_kernel
from sw.quant.granularity import SINGLE, from_groups, group_strides, to_groups

pytestmark = pytest.mark.usefixtures("pwlq_kernel_built")  # tests/conftest.py

# a 6x6 stem, 3x3 and 1x1 convs of every width, the Detect head
LAYERS = ("model.0.conv", "model.1.conv", "model.2.cv1.conv", "model.2.m.0.cv2.conv", "model.8.cv3.conv",
          "model.24.m.2")


@pytest.fixture(scope="module")
def deploy(yolov5n):
    import copy

    return to_deploy(copy.deepcopy(yolov5n)).eval()


def _torch_path(g: torch.Tensor, m: torch.Tensor, bits: int, approx: torch.Tensor) -> torch.Tensor:
    """The definition: _search_rows on all groups (candidates scored by the same compiled scorer)."""
    windows = 1 if g.shape[1] <= pwlq.SHORT_GROUP else pwlq.FINE_WINDOWS
    return pwlq._search_rows(g, m, bits, approx, windows)


@contextlib.contextmanager
def _threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _with_degenerate_groups(g: torch.Tensor) -> torch.Tensor:
    """``g`` with an all-zero group, an all-equal one, one of a single nonzero member and one of +-equal members
    in place of its first four (when it has more than four)."""
    if g.shape[0] <= 4:
        return g
    g = g.clone()
    g[0] = 0.0
    g[1] = 0.0123
    g[2] = 0.0
    g[2, -1] = -0.5
    g[3] = 0.25
    g[3, ::2] = -0.25
    return g


def _check_layer(w: torch.Tensor, gran: str, bits: int) -> int:
    g = _with_degenerate_groups(to_groups(w, gran).contiguous())
    m, std = pwlq.group_stats(g)
    approx = pwlq.approx_breakpoint(m, std)
    with _threads(min(torch.get_num_threads(), g.shape[0])):  # the kernel needs a group per thread
        fused = pwlq.search_breakpoint(g, m, bits, approx)
    reference = _torch_path(g, m, bits, approx)
    assert fused.dtype == reference.dtype == torch.float64
    assert torch.equal(fused, reference), f"{gran} k={bits}: {int((fused != reference).sum())} breakpoints differ"
    return g.shape[0]


@pytest.mark.parametrize("bits", [3, 4, 6])
@pytest.mark.parametrize("gran", SINGLE)
def test_kernel_search_returns_the_torch_paths_breakpoints(deploy, gran, bits):
    convs = deploy.conv_layers()
    assert sum(_check_layer(convs[name].weight.detach().float(), gran, bits) for name in LAYERS) > 0


@pytest.mark.slow
@pytest.mark.parametrize("bits", [3, 4, 6])
def test_kernel_search_on_every_yolov5n_layer(deploy, bits):
    for w in (c.weight.detach().float() for c in deploy.conv_layers().values()):
        for gran in SINGLE:
            _check_layer(w, gran, bits)


def test_tied_windows_are_left_to_the_torch_rule(deploy):
    """torch.topk's order on ties is undefined: the kernel hands such groups back (NaN) and the torch path decides.
    Real data has them: one C-shape group of YOLOv5n's stem at k = 6, where {best coarse point, lattice} tie."""
    g = to_groups(deploy.conv_layers()["model.0.conv"].weight.detach().float(), "cshape").contiguous()
    m, std = pwlq.group_stats(g)
    approx = pwlq.approx_breakpoint(m, std)
    windows = 1 if g.shape[1] <= pwlq.SHORT_GROUP else pwlq.FINE_WINDOWS
    raw = pwlq_kernel.search(g, m, approx, 6, windows, pwlq.COARSE_FRACTIONS, pwlq._steps(pwlq.COARSE_STEP),
                             pwlq._steps(pwlq.FINE_STEP), pwlq.FINE_STEP, 1.0)
    tied = raw.isnan()[:, 0]
    assert tied.any() and not tied.all()
    reference = _torch_path(g, m, 6, approx)
    assert torch.equal(raw[~tied], reference[~tied])
    assert torch.equal(pwlq.search_breakpoint(g, m, 6, approx), reference)


def test_kernel_search_is_independent_of_the_thread_count(deploy):
    g = to_groups(deploy.conv_layers()["model.2.m.0.cv2.conv"].weight.detach().float(), "channel").contiguous()
    m, std = pwlq.group_stats(g)
    approx = pwlq.approx_breakpoint(m, std)
    results = []
    for n in (1, 2, 3):
        with _threads(n):
            results.append(pwlq.search_breakpoint(g, m, 4, approx))
    assert all(torch.equal(results[0], r) for r in results[1:])


@pytest.mark.parametrize("gran", SINGLE)
def test_kernel_group_stats_are_torchs(deploy, gran):
    """max |w| and the unbiased std, bit for bit (the approximated breakpoint, and so every result, depends on it)."""
    for w in (c.weight.detach().float() for c in deploy.conv_layers().values()):
        g = to_groups(w, gran)
        fused = pwlq_kernel.stats(g)
        if g.shape[1] >= pwlq_kernel.STD_GRAIN:
            assert fused is None  # torch splits such rows between threads: its own std is used
            continue
        m, std = fused
        assert torch.equal(m, g.abs().amax(1, keepdim=True))
        if g.shape[1] == 1:
            assert std.isnan().all()
        else:
            assert torch.equal(std, g.std(1, keepdim=True))


@pytest.mark.parametrize("layer", ["model.0.conv", "model.2.cv1.conv", "model.2.m.0.cv2.conv"])  # 6x6, 1x1, 3x3
@pytest.mark.parametrize("gran", SINGLE)
def test_kernel_rounds_and_dequantizes_in_the_weights_layout(deploy, gran, layer):
    """Codes, regions and weights written straight into the conv weight's layout (no transposes) equal the torch
    functions' on the groups' rows, put back by from_groups."""
    w = deploy.conv_layers()[layer].weight.detach().float()
    g = to_groups(w, gran).contiguous()
    m, std = pwlq.group_stats(g)
    p = pwlq.approx_breakpoint(m, std)
    codes, region, s_c, s_t, bp = pwlq.quantize(w, m, p, 4, gran)
    ref_codes, ref_region = pwlq.round_to_levels(g, s_c, s_t, bp, 4)
    assert torch.equal(codes, from_groups(ref_codes.to(torch.int8), tuple(w.shape), gran))
    assert torch.equal(region, from_groups(ref_region, tuple(w.shape), gran))
    fast = pwlq_kernel.dequantize(codes, region, s_c, s_t, bp, 4, group_strides(tuple(w.shape), gran))
    slow = pwlq.dequantize(ref_codes, ref_region, s_c, s_t, bp, 4).float()
    assert torch.equal(fast, from_groups(slow, tuple(w.shape), gran))
