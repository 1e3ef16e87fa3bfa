"""Building blocks of YOLOv5/YOLOv7, written so that their state_dict names match the official checkpoints.

Attribute names (``conv``, ``bn``, ``cv1``, ``rbr_dense`` ...) are part of the checkpoint format: a layer's
name throughout yoloq is its state_dict prefix, e.g. ``model.2.cv1.conv``.
"""

from __future__ import annotations

import torch
from torch import nn

# Both upstreams set BN eps to 1e-3 in Model.__init__ (initialize_weights); checkpoints carry it as an attribute.
BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(k: int, p: int | None = None) -> int:
    """'same' padding for odd kernels, as upstream."""
    return k // 2 if p is None else p


def batchnorm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


def make_activation(act) -> nn.Module:
    """``True`` means SiLU (upstream default); an nn.Module is used as given; anything falsy means none."""
    if act is True:
        return nn.SiLU()
    if isinstance(act, nn.Module):
        return act
    return nn.Identity()


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> activation. After BN folding ``bn`` is gone and ``conv`` has a bias."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = batchnorm(c2)
        self.act = make_activation(act)

    def forward(self, x):
        if self.bn is None:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))


class RepConv(nn.Module):
    """YOLOv7's re-parameterisable 3x3 conv: 3x3+BN, 1x1+BN and (if shapes allow) identity BN, summed.

    ``deploy=True`` builds the fused form, a single biased 3x3 conv named ``rbr_reparam``;
    :func:`sw.models.fuse.fuse_repconv` turns the training form into it.
    """

    def __init__(self, c1, c2, k=3, s=1, p=None, g=1, act=True, deploy=False):
        super().__init__()
        if k != 3 or autopad(k, p) != 1:
            raise ValueError(f"RepConv supports only k=3 with padding 1, got k={k}, p={p}")
        self.in_channels, self.out_channels, self.groups = c1, c2, g
        self.act = make_activation(act)
        if deploy:
            self.rbr_reparam = nn.Conv2d(c1, c2, k, s, 1, groups=g, bias=True)
        else:
            self.rbr_identity = batchnorm(c1) if c2 == c1 and s == 1 else None
            self.rbr_dense = nn.Sequential(nn.Conv2d(c1, c2, k, s, 1, groups=g, bias=False), batchnorm(c2))
            self.rbr_1x1 = nn.Sequential(nn.Conv2d(c1, c2, 1, s, 0, groups=g, bias=False), batchnorm(c2))

    @property
    def fused(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def forward(self, x):
        if self.fused:
            return self.act(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + identity)


class SPPCSPC(nn.Module):
    """YOLOv7's CSP spatial pyramid pooling block."""

    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5, k=(5, 9, 13)):
        super().__init__()
        c_ = int(2 * c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(c_, c_, 3, 1)
        self.cv4 = Conv(c_, c_, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)
        self.cv5 = Conv(4 * c_, c_, 1, 1)
        self.cv6 = Conv(c_, c_, 3, 1)
        self.cv7 = Conv(2 * c_, c2, 1, 1)

    def forward(self, x):
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1] + [m(x1) for m in self.m], 1)))
        return self.cv7(torch.cat((y1, self.cv2(x)), 1))


class MP(nn.Module):
    """Stride-k max pooling (YOLOv7 downsampling branch)."""

    def __init__(self, k=2):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=k)

    def forward(self, x):
        return self.m(x)


class SP(nn.Module):
    """Same-size max pooling (YOLOv7-tiny's SPP)."""

    def __init__(self, k=3, s=1):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=k, stride=s, padding=k // 2)

    def forward(self, x):
        return self.m(x)


class Concat(nn.Module):
    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Bottleneck(nn.Module):
    """YOLOv5 residual bottleneck: 1x1 then 3x3, with a shortcut when shapes match."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """YOLOv5 CSP block with three convs and ``n`` bottlenecks."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """YOLOv5 fast SPP: three chained 5x5 max pools, equivalent to SPP(5, 9, 13)."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class ImplicitA(nn.Module):
    """YOLOR implicit knowledge, added before a Detect conv."""

    def __init__(self, channel):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channel, 1, 1))

    def forward(self, x):
        return self.implicit + x


class ImplicitM(nn.Module):
    """YOLOR implicit knowledge, multiplied after a Detect conv."""

    def __init__(self, channel):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channel, 1, 1))

    def forward(self, x):
        return self.implicit * x
