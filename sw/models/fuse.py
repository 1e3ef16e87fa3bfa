"""Re-parameterisations that change a model's weights but not its function.

- :func:`fold_bn` folds a BatchNorm into the preceding conv (deployment option; the paper keeps BN separate).
- :func:`fuse_repconv` turns a training-form RepConv (3x3+BN, 1x1+BN, identity BN) into one biased 3x3 conv.
- :func:`fuse_implicit` folds IDetect's ImplicitA/ImplicitM into its convs, giving a plain Detect.
- :func:`to_deploy` applies the last two: the form YOLOv7's deploy configs describe and the quantizer sees.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .heads import Detect, IDetect
from .layers import Conv, RepConv


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new biased conv computing ``bn(conv(x))`` in eval mode."""
    scale, shift = _bn_scale_shift(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, dtype=conv.weight.dtype, device=conv.weight.device)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias.copy_(bias)
    return fused


def _branch_kernel(branch, in_channels: int, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(3x3 kernel, bias) equivalent to one RepConv branch in eval mode."""
    if isinstance(branch, nn.Sequential):
        conv, bn = branch[0], branch[1]
        kernel = conv.weight
        if kernel.shape[-1] == 1:
            kernel = F.pad(kernel, [1, 1, 1, 1])
    else:  # identity BatchNorm: a 3x3 kernel with a 1 at the centre of each channel's own input
        bn = branch
        per_group = in_channels // groups
        kernel = torch.zeros(in_channels, per_group, 3, 3, dtype=bn.weight.dtype, device=bn.weight.device)
        for i in range(in_channels):
            kernel[i, i % per_group, 1, 1] = 1.0
    scale, shift = _bn_scale_shift(bn)
    return kernel * scale.view(-1, 1, 1, 1), shift


@torch.no_grad()
def fuse_repconv(m: RepConv) -> RepConv:
    """Turn a training-form RepConv into its deploy form in place (attribute ``rbr_reparam``)."""
    if m.fused:
        return m
    branches = [m.rbr_dense, m.rbr_1x1] + ([m.rbr_identity] if m.rbr_identity is not None else [])
    kernels, biases = zip(*(_branch_kernel(b, m.in_channels, m.groups) for b in branches))
    dense = m.rbr_dense[0]
    fused = nn.Conv2d(m.in_channels, m.out_channels, 3, dense.stride, 1, groups=m.groups, bias=True,
                      dtype=dense.weight.dtype, device=dense.weight.device)
    fused.weight.copy_(sum(kernels))
    fused.bias.copy_(sum(biases))
    for name in ("rbr_dense", "rbr_1x1", "rbr_identity"):
        delattr(m, name)
    m.rbr_reparam = fused
    return m


@torch.no_grad()
def fuse_implicit(head: IDetect) -> Detect:
    """A Detect computing the same as ``head``: ``im * (W (x + ia) + b)`` = ``(im W) x + im (W ia + b)``."""
    plain = Detect.__new__(Detect)
    nn.Module.__init__(plain)
    plain.nc, plain.no, plain.nl, plain.na = head.nc, head.no, head.nl, head.na
    plain.register_buffer("anchors", head.anchors.clone())
    plain.register_buffer("stride", head.stride.clone(), persistent=False)
    plain.m = head.m
    for conv, ia, im in zip(head.m, head.ia, head.im):
        w = conv.weight
        conv.bias.copy_((conv.bias + (w[:, :, 0, 0] @ ia.implicit.view(-1))) * im.implicit.view(-1))
        conv.weight.copy_(w * im.implicit.view(-1, 1, 1, 1))
    plain.i, plain.f = head.i, head.f
    return plain


def to_deploy(model):
    """Fuse every RepConv and IDetect in place; the result matches YOLOv7's deploy configs."""
    for m in model.modules():
        if isinstance(m, RepConv):
            fuse_repconv(m)
    if isinstance(model.model[-1], IDetect):
        model.model[-1] = fuse_implicit(model.model[-1])
        model.yaml["head"][-1][2] = "Detect"
    return model


def fold_all_bn(model):
    """Fold every Conv block's BatchNorm into its conv in place (the deployment option of the quantizer)."""
    for m in model.modules():
        if isinstance(m, Conv) and m.bn is not None:
            m.conv = fold_bn(m.conv, m.bn)
            m.bn = None
    return model
