"""A YOLO model lowered to a flat graph of primitive operations on named tensors.

The integer network (:mod:`sw.intref.intnet`) and its per-tensor calibration both walk this graph: a conv block
(conv, optional BatchNorm, activation), a residual add, a channel concat, a max pool, a nearest upsample,
and the Detect head's convs. Every tensor between them has an id (the module path of the operation that
makes it, e.g. ``model.2.m.0`` for a bottleneck's sum, ``model.2.cv1`` for a conv block's output); the image
is :data:`INPUT`. :func:`lower` refuses any module it has no rule for, by name.

Tensors that must share one activation quantizer form a class (:attr:`Graph.classes`): a concat's inputs
and output (the producers write the concat's codes directly), and a max pool's or an upsample's input and
output (both act on codes unchanged, which is exact because quantization is monotonic).

:meth:`Graph.run_float` executes the graph in floating point with the model's own modules, which is the
model's forward pass (the tests check it equals it); calibration observes the tensors on the way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import QuantizationError
from ..models.heads import Detect, IDetect
from ..models.layers import C3, MP, SP, SPPCSPC, SPPF, Bottleneck, Concat, Conv, RepConv
from .epilogue import activation_name

INPUT = "input"
SUPPORTED = ("Conv", "RepConv (fused)", "C3", "Bottleneck", "SPPF", "SPPCSPC", "MP", "SP", "MaxPool2d", "Concat",
             "Upsample (nearest)", "Detect", "Sequential")


@dataclass
class ConvNode:
    """A conv block: ``act(bn(conv(x)))``; ``name`` is the conv's state-dict prefix (the contract's name).
    ``head`` is the Detect level of a head conv (no activation, output dequantized), else None."""

    name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None
    act: nn.Module
    activation: str
    src: str
    dst: str
    head: int | None = None

    def pre_float(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if self.bn is None else self.bn(y)

    def channel_scale_and_bias(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The BatchNorm's per-channel scale ``a_c`` and the bias in the conv's units, so that
        ``pre = a_c * (conv_nobias + bias_c)`` (no BatchNorm: (None, the conv's bias))."""
        bias = None if self.conv.bias is None else self.conv.bias.detach().double()
        if self.bn is None:
            return None, bias
        bn = self.bn
        scale = bn.weight.detach().double() / (bn.running_var.detach().double() + bn.eps).sqrt()
        shift = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
        return scale, shift / scale + (0 if bias is None else bias)


@dataclass
class AddNode:
    srcs: tuple[str, str]
    dst: str


@dataclass
class ConcatNode:
    srcs: tuple[str, ...]
    dst: str


@dataclass
class PoolNode:
    kernel: int
    stride: int
    padding: int
    src: str
    dst: str

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)


@dataclass
class UpsampleNode:
    scale: int
    src: str
    dst: str

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.scale, 2).repeat_interleave(self.scale, 3)


Node = ConvNode | AddNode | ConcatNode | PoolNode | UpsampleNode


@dataclass
class Graph:
    nodes: list[Node]
    detect: Detect
    heads: list[str]                       # the head convs' output tensors, by level
    classes: dict[str, str] = field(default_factory=dict)   # tensor -> its quantizer class's representative

    @property
    def convs(self) -> dict[str, ConvNode]:
        return {n.name: n for n in self.nodes if isinstance(n, ConvNode)}

    def members(self, rep: str) -> list[str]:
        return [t for t, r in self.classes.items() if r == rep]

    def run_float(self, x: torch.Tensor, observe=None, stop=None) -> torch.Tensor | None:
        """The model's forward pass on the graph; ``observe(kind, key, tensor)`` sees every tensor (kind
        "tensor", key its id; a Detect conv's output: kind "head") and every conv's pre-activation (kind "pre",
        key the conv's name). Returns the
        decoded predictions, or None when ``stop()`` (asked after each node) ended the pass early."""
        env = {INPUT: x}
        if observe:
            observe("tensor", INPUT, x)
        for node in self.nodes:
            if isinstance(node, ConvNode):
                pre = node.pre_float(env[node.src])
                if observe and node.head is None:
                    observe("pre", node.name, pre)
                out = pre if node.head is not None else node.act(pre)
            elif isinstance(node, AddNode):
                out = env[node.srcs[0]] + env[node.srcs[1]]
            elif isinstance(node, ConcatNode):
                out = torch.cat([env[s] for s in node.srcs], 1)
            else:
                out = node.apply(env[node.src])
            env[node.dst] = out
            if observe:
                observe("head" if isinstance(node, ConvNode) and node.head is not None else "tensor", node.dst, out)
            if stop is not None and stop():
                return None
        return self.detect.decode([env[h] for h in self.heads])


class _Lowering:
    def __init__(self):
        self.nodes: list[Node] = []

    def conv_block(self, m: nn.Module, prefix: str, src: str) -> str:
        if isinstance(m, Conv):
            conv, bn = m.conv, m.bn
            name = f"{prefix}.conv"
        elif isinstance(m, RepConv):
            if not m.fused:
                raise QuantizationError(f"{prefix}: RepConv in training form; the integer network needs the "
                                        "deploy form (fused)")
            conv, bn, name = m.rbr_reparam, None, f"{prefix}.rbr_reparam"
        else:
            raise AssertionError(type(m))
        if conv.groups != 1 or conv.dilation != (1, 1):
            raise QuantizationError(f"{name}: grouped or dilated convs have no integer form here")
        self.nodes.append(ConvNode(name, conv, bn, m.act, activation_name(m.act), src, prefix))
        return prefix

    def pool(self, m: nn.MaxPool2d, prefix: str, src: str) -> str:
        k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        if m.dilation not in (1, (1, 1)) or m.ceil_mode:
            raise QuantizationError(f"{prefix}: dilated or ceil-mode max pooling has no integer form here")
        self.nodes.append(PoolNode(k, s, p, src, prefix))
        return prefix

    def module(self, m: nn.Module, prefix: str, src: str) -> str:
        if isinstance(m, (Conv, RepConv)):
            return self.conv_block(m, prefix, src)
        if isinstance(m, Bottleneck):
            y = self.module(m.cv2, f"{prefix}.cv2", self.module(m.cv1, f"{prefix}.cv1", src))
            if not m.add:
                return y
            self.nodes.append(AddNode((src, y), prefix))
            return prefix
        if isinstance(m, C3):
            a = self.module(m.cv1, f"{prefix}.cv1", src)
            for j, b in enumerate(m.m):
                a = self.module(b, f"{prefix}.m.{j}", a)
            c = self.module(m.cv2, f"{prefix}.cv2", src)
            self.nodes.append(ConcatNode((a, c), f"{prefix}.cat"))
            return self.module(m.cv3, f"{prefix}.cv3", f"{prefix}.cat")
        if isinstance(m, SPPF):
            x = self.module(m.cv1, f"{prefix}.cv1", src)
            pooled = [x]
            for j in range(3):
                pooled.append(self.pool(m.m, f"{prefix}.m.{j}", pooled[-1]))
            self.nodes.append(ConcatNode(tuple(pooled), f"{prefix}.cat"))
            return self.module(m.cv2, f"{prefix}.cv2", f"{prefix}.cat")
        if isinstance(m, SPPCSPC):
            x1 = self.module(m.cv4, f"{prefix}.cv4", self.module(m.cv3, f"{prefix}.cv3",
                                                                  self.module(m.cv1, f"{prefix}.cv1", src)))
            pooled = [x1] + [self.pool(p, f"{prefix}.m.{j}", x1) for j, p in enumerate(m.m)]
            self.nodes.append(ConcatNode(tuple(pooled), f"{prefix}.cat1"))
            y1 = self.module(m.cv6, f"{prefix}.cv6", self.module(m.cv5, f"{prefix}.cv5", f"{prefix}.cat1"))
            y2 = self.module(m.cv2, f"{prefix}.cv2", src)
            self.nodes.append(ConcatNode((y1, y2), f"{prefix}.cat2"))
            return self.module(m.cv7, f"{prefix}.cv7", f"{prefix}.cat2")
        if isinstance(m, (MP, SP)):
            return self.pool(m.m, prefix, src)
        if isinstance(m, nn.MaxPool2d):
            return self.pool(m, prefix, src)
        if isinstance(m, nn.Upsample):
            scale = m.scale_factor
            if m.mode != "nearest" or m.size is not None or float(scale) != int(scale) or int(scale) < 1:
                raise QuantizationError(f"{prefix}: only nearest upsampling by an integer factor has an integer form")
            self.nodes.append(UpsampleNode(int(scale), src, prefix))
            return prefix
        if isinstance(m, nn.Sequential):
            for j, sub in enumerate(m):
                src = self.module(sub, f"{prefix}.{j}", src)
            return src
        raise QuantizationError(f"{prefix}: module {type(m).__name__} has no integer form "
                                f"(supported: {', '.join(SUPPORTED)})")


def lower(model) -> Graph:
    """The graph of a deploy-form :class:`~sw.models.yolo.YoloModel` (RepConv and IDetect fused)."""
    low = _Lowering()
    outputs: list[str] = []
    for i, m in enumerate(model.model):
        f = m.f
        sources = [f] if isinstance(f, int) else list(f)
        src = [INPUT if i == 0 else outputs[-1] if j == -1 else outputs[j] for j in sources]
        prefix = f"model.{i}"
        if isinstance(m, IDetect):
            raise QuantizationError(f"{prefix}: IDetect in training form; the integer network needs the deploy "
                                    "form (implicit layers fused into a Detect)")
        if isinstance(m, Detect):
            if i != len(model.model) - 1:
                raise QuantizationError(f"{prefix}: Detect must be the last layer")
            heads = []
            for level, (conv, s) in enumerate(zip(m.m, src)):
                low.nodes.append(ConvNode(f"{prefix}.m.{level}", conv, None, nn.Identity(), "identity", s,
                                          f"{prefix}.m.{level}", head=level))
                heads.append(f"{prefix}.m.{level}")
            graph = Graph(low.nodes, m, heads)
            graph.classes = _classes(graph)
            return graph
        if isinstance(m, Concat):
            low.nodes.append(ConcatNode(tuple(src), prefix))
            outputs.append(prefix)
            continue
        if len(src) != 1:
            raise QuantizationError(f"{prefix}: {type(m).__name__} with {len(src)} inputs has no integer form")
        outputs.append(low.module(m, prefix, src[0]))
    raise QuantizationError("the model has no Detect head")


def _classes(graph: Graph) -> dict[str, str]:
    """Union-find over tensors: concat inputs with its output, pool and upsample input with output. A class
    is represented by its first tensor in graph order."""
    parent: dict[str, str] = {INPUT: INPUT}
    order = {INPUT: 0}

    def find(t):
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            first, second = (ra, rb) if order[ra] <= order[rb] else (rb, ra)
            parent[second] = first

    for node in graph.nodes:
        if isinstance(node, ConvNode) and node.head is not None:
            continue  # dequantized, no quantizer
        parent[node.dst] = node.dst
        order[node.dst] = len(order)
        if isinstance(node, ConcatNode):
            for s in node.srcs:
                union(s, node.dst)
        elif isinstance(node, (PoolNode, UpsampleNode)):
            union(node.src, node.dst)
    return {t: find(t) for t in parent}
