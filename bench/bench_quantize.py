"""Quantizer speed on generated YOLOv7 weights (92 convs, 36.9M weights, deploy form).

For each configuration: seconds for ``quantize_model`` end to end (deploy copy, all layers, error statistics
and fake-quant weights), seconds for the vectorised quantizer alone over all layers, and the ratio of a
straightforward per-group loop (one group at a time through the same quantizer) to the vectorised one,
measured in the same run. The loop is timed on an evenly spread sample of groups per layer and scaled to the
layer's group count, since running it in full would take hours for channel-wise.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import time

import torch

from sw.checkpoint.official import generate_weights
from sw.models import YoloModel, builtin_config, to_deploy
from sw.quant.granularity import num_groups, to_groups
from sw.quant.model import QuantSpec, quantize_model
from sw.quant.quantizer import quantize_tensor


def per_group_loop_seconds(model, spec: QuantSpec, sample_groups: int) -> float:
    """Estimated seconds of quantizing every group separately (single granularities only)."""
    total = 0.0
    for conv in model.conv_layers().values():
        w = conv.weight.detach()
        if spec.granularity == "channel" and w.shape[2] * w.shape[3] == 1 and spec.channel_1x1 == "fp16":
            continue
        groups = to_groups(w, spec.granularity)
        g = num_groups(tuple(w.shape), spec.granularity)
        idx = torch.linspace(0, g - 1, min(g, sample_groups)).long()
        t0 = time.perf_counter()
        for i in idx.tolist():
            quantize_tensor(groups[i].view(1, -1, 1, 1), spec.method, spec.bits, "layer", spec.breakpoint)
        total += (time.perf_counter() - t0) * g / len(idx)
    return total


def vectorised_seconds(model, spec: QuantSpec) -> float:
    t0 = time.perf_counter()
    for conv in model.conv_layers().values():
        w = conv.weight.detach()
        if spec.granularity == "channel" and w.shape[2] * w.shape[3] == 1 and spec.channel_1x1 == "fp16":
            continue
        quantize_tensor(w, spec.method, spec.bits, spec.granularity, spec.breakpoint)
    return time.perf_counter() - t0


def timed(model, spec) -> float:
    t0 = time.perf_counter()
    quantize_model(model, spec, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample-groups", type=int, default=20, help="groups per layer timed in the loop baseline")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = to_deploy(generate_weights(YoloModel(builtin_config("yolov7-training")), seed=0))
    n = sum(c.weight.numel() for c in model.conv_layers().values())
    print(f"generated YOLOv7: {len(model.conv_layers())} convs, {n:,} weights, torch threads {torch.get_num_threads()}")
    rows, table1 = [], 0.0
    singles = [(m, g) for m in ("affine", "symmetric", "symmetric-full", "pwlq")
               for g in ("layer", "filter", "channel", "fshape", "cshape")]
    for method, gran in singles:
        spec = QuantSpec(method, 4, gran)
        sec = timed(model, spec)
        vec = vectorised_seconds(model, spec)
        loop = per_group_loop_seconds(model, spec, args.sample_groups)
        if method in ("affine", "pwlq") and gran in ("filter", "channel", "fshape", "cshape"):
            table1 += sec
        rows.append([f"{method} 4b {gran}", round(sec, 2), round(vec, 2), round(loop, 1), round(loop / vec, 1)])
    for method in ("affine", "pwlq"):
        for mix in ("mix3", "mix4"):
            rows.append([f"{method} 4b {mix}", round(timed(model, QuantSpec(method, 4, mix)), 2), "", "", ""])
    approx = timed(model, QuantSpec("pwlq", 4, "cshape", breakpoint="approx"))
    rows.append(["pwlq 4b cshape, approximated breakpoint", round(approx, 2), "", "", ""])
    print(table(["configuration", "quantize_model s", "vectorised quantizer s", "per-group loop s (est.)",
                 "loop / vectorised"], rows))
    print(f"\nall eight Table I configurations ({{affine, pwlq}} x {{filter, channel, fshape, cshape}}): "
          f"{table1:.1f} s")


if __name__ == "__main__":
    main()
