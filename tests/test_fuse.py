"""Folding BN, fusing RepConv and IDetect's implicit layers keep the function (checked in float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sw.models import YoloModel, builtin_config, fold_all_bn, to_deploy
from sw.models.fuse import fold_bn, fuse_implicit, fuse_repconv
from sw.models.heads import IDetect
from sw.models.layers import RepConv


def _randomize_bn(module: nn.Module, g: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.5, generator=g)
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)


def test_fold_bn_equal_outputs():
    g = torch.Generator().manual_seed(0)
    conv, bn = nn.Conv2d(8, 16, 3, 2, 1, bias=False).double(), nn.BatchNorm2d(16).double()
    _randomize_bn(bn, g)
    bn.eval()
    x = torch.randn(2, 8, 11, 13, dtype=torch.float64, generator=g)
    fused = fold_bn(conv, bn)
    torch.testing.assert_close(fused(x), bn(conv(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("c1, c2, s", [(16, 16, 1), (16, 32, 1), (16, 16, 2)])
def test_fuse_repconv_equal_outputs(c1, c2, s):
    g = torch.Generator().manual_seed(1)
    m = RepConv(c1, c2, 3, s).double()
    assert (m.rbr_identity is not None) == (c1 == c2 and s == 1)
    _randomize_bn(m, g)
    m.eval()
    x = torch.randn(2, c1, 9, 12, dtype=torch.float64, generator=g)
    expected = m(x)
    fuse_repconv(m)
    assert m.fused and not hasattr(m, "rbr_dense")
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_fuse_implicit_equal_outputs():
    g = torch.Generator().manual_seed(2)
    head = IDetect(80, [[10, 13, 16, 30, 33, 23]] * 2, (16, 32)).double()
    head.stride.copy_(torch.tensor([8.0, 16.0]))
    for ia in head.ia:
        ia.implicit.data.normal_(0, 0.3, generator=g)
    for im in head.im:
        im.implicit.data.normal_(1, 0.3, generator=g)
    xs = [torch.randn(1, 16, 8, 8, dtype=torch.float64, generator=g),
          torch.randn(1, 32, 4, 4, dtype=torch.float64, generator=g)]
    head.i, head.f = 0, -1
    expected = head(xs)
    plain = fuse_implicit(head)
    assert type(plain).__name__ == "Detect"
    torch.testing.assert_close(plain(xs), expected, rtol=1e-10, atol=1e-9)


def test_whole_model_deploy_and_bn_fold_equal_outputs():
    g = torch.Generator().manual_seed(3)
    model = YoloModel(builtin_config("yolov7-tiny-training")).double()
    _randomize_bn(model, g)
    model.eval()
    x = torch.rand(1, 3, 128, 160, dtype=torch.float64, generator=g)
    with torch.no_grad():
        expected = model(x)
        to_deploy(model)
        assert type(model.detect).__name__ == "Detect"
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-8)
        fold_all_bn(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-8)
