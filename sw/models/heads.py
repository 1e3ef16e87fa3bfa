"""Detection heads: YOLOv5/YOLOv7 ``Detect`` and YOLOv7's ``IDetect`` (with YOLOR implicit layers)."""

from __future__ import annotations

import torch
from torch import nn

from .layers import ImplicitA, ImplicitM


class Detect(nn.Module):
    """Per-level 1x1 convs predicting ``na * (nc + 5)`` channels, decoded to pixel xywh, objectness, classes.

    ``anchors`` is a buffer in stride units, as both upstreams store it; ``stride`` is set by the model.
    The pixel anchor grid is derived (``anchors * stride``) rather than stored, so YOLOv7 checkpoints, which
    also store it, are checked against it on load instead.
    """

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def head_conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.m[i](x)

    def forward(self, xs):
        return self.decode([self.head_conv(i, xs[i]) for i in range(self.nl)])

    def decode(self, ps: list[torch.Tensor]) -> torch.Tensor:
        """Box decoding of the head convs' outputs (one per level): ``[bs, anchors, 5 + nc]``."""
        out = []
        for i in range(self.nl):
            p = ps[i]
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).float()
            y = p.sigmoid()
            yv, xv = torch.meshgrid(torch.arange(ny, device=p.device), torch.arange(nx, device=p.device),
                                    indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2).to(y.dtype)
            anchor_px = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2)
            xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[i]
            wh = (y[..., 2:4] * 2) ** 2 * anchor_px
            out.append(torch.cat((xy, wh, y[..., 4:]), -1).view(bs, -1, self.no))
        return torch.cat(out, 1)


class IDetect(Detect):
    """YOLOv7 training-form head: ``im * conv(x + ia)``. :func:`sw.models.fuse.fuse_implicit` folds it away."""

    def __init__(self, nc=80, anchors=(), ch=()):
        super().__init__(nc, anchors, ch)
        self.ia = nn.ModuleList(ImplicitA(x) for x in ch)
        self.im = nn.ModuleList(ImplicitM(self.no * self.na) for _ in ch)

    def head_conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.im[i](self.m[i](self.ia[i](x)))
