"""The PE's element stream (sw side): the beat-level arithmetic equals the integer conv exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sw.intref.contract import LayerContract
from sw.intref.conv import integer_conv2d_int64
from sw.intref.stream import StreamLayout, im2col, mode_for, pe_accumulate
from sw.quant.quantizer import quantize_tensor


@pytest.mark.parametrize("method", ["affine", "symmetric", "symmetric-full", "pwlq"])
@pytest.mark.parametrize("gran", ["layer", "filter", "channel", "fshape", "cshape"])
@pytest.mark.parametrize("lanes", [1, 3, 16])
def test_beat_arithmetic_equals_integer_conv(method, gran, lanes):
    g = torch.Generator().manual_seed(lanes)
    c = LayerContract.from_record("l", quantize_tensor(torch.randn(4, 6, 3, 3, generator=g), method, 5, gran), 8, 12)
    layout = StreamLayout.build(c, lanes)
    assert layout.mode == mode_for(gran)
    x = torch.randint(-128, 128, (1, 6, 5, 5), generator=g).double()
    pad = -7
    cols = im2col(x, c, 2, 1, pad)[0]
    ref = integer_conv2d_int64(torch.nn.functional.pad(x, [1] * 4, value=pad), c.weight_int(), 2, 0)
    for o in range(4):
        assert np.array_equal(pe_accumulate(layout, o, layout.act_beats(cols)), ref[0, o].reshape(-1).numpy())


def test_layout_covers_every_element_once():
    c = LayerContract.from_record("l", quantize_tensor(torch.randn(4, 6, 3, 3), "affine", 4, "cshape"), 8, 16)
    layout = StreamLayout.build(c, 4)
    used = layout.lane_element[layout.lane_element >= 0]
    assert sorted(used.tolist()) == list(range(54))
    # C-shape runs are the 6 input channels of one kernel position: 2 beats each at 4 lanes
    assert layout.beats == 9 * 2 and layout.utilisation == pytest.approx(54 / 72)


def test_pack_round_trip():
    c = LayerContract.from_record("l", quantize_tensor(torch.randn(2, 3, 3, 3), "pwlq", 4, "filter"), 8, 16)
    layout = StreamLayout.build(c, 4)
    fmt = layout.stream_format()
    wb = layout.weight_beats(1)
    acts = np.full((layout.beats, 4), -5)
    words = fmt.pack({**wb, "act": acts})
    offset = 0
    for name, bits, items in ((f.name, f.bits, f.items) for f in fmt.fields):
        for item in range(items):
            got = [(w >> offset) & ((1 << bits) - 1) for w in words]
            src = acts if name == "act" else np.asarray(wb[name]).reshape(layout.beats, items)
            assert got == [int(v) & ((1 << bits) - 1) for v in np.asarray(src).reshape(layout.beats, items)[:, item]]
            offset += bits
    assert offset == fmt.width
