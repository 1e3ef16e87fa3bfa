"""Evaluation throughput (images/s) for yolov5n (real) and YOLOv7 (generated weights).

Baseline measured in the same run, before and after the evaluations (their mean time): the model's forward pass
alone on the same letterboxed batches. The ratio says how much of the end-to-end time (decode, forward, NMS,
scoring) is the network itself; "sequential" is
the evaluation without overlapping decoding, NMS and per-image scoring with the forward pass
(``pipeline=False``). The load average before and after is printed beside the figures (a shared machine).
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
    from .bench_busy import busy
except ImportError:
    from common import table
    from bench_busy import busy

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from sw.checkpoint import load_model
from sw.checkpoint.official import generate_weights, write_official_checkpoint
from sw.eval.coco import evaluate, load_coco
from sw.eval.coco_classes import NAMES
from sw.eval.images import prefetch_batches, shape_batches
from sw.models import YoloModel, builtin_config, to_deploy
from sw.paths import data_file


def forward_only(model, coco, batch_size: int) -> float:
    batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], 640, 32, batch_size)
    loaded = list(prefetch_batches(batches, coco.paths, 640, 32))
    with torch.inference_mode():
        model(loaded[0][0].float() / 255.0)  # warm-up: allocator and kernel selection
    t0 = time.perf_counter()
    with torch.inference_mode():
        for images, _ in loaded:
            model(images.float() / 255.0)
    return len(coco.paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--v5-images", type=int, default=206)
    ap.add_argument("--v7-images", type=int, default=16, help="0: yolov5n only")
    ap.add_argument("--busy", action="store_true",
                    help="measure everything beside one other torch process (bench_busy's default-settings loop)")
    args = ap.parse_args()
    rows = busy(lambda: measure(args)) if args.busy else measure(args)
    print(f"torch threads: {torch.get_num_threads()}" + ("; beside one other torch process" if args.busy else ""))
    print(table(["model", "images", "forward-only img/s (baseline)", "eval img/s, sequential", "eval img/s",
                 "ratio sequential", "ratio", "mAP@.5 / mAP@.5:.95", "load average"], rows))


def measure(args) -> list[list]:
    rows = []
    v5 = load_model(data_file("yolov5n/yolov5n.pt")).model
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "yolov7.pt"
        write_official_checkpoint(generate_weights(YoloModel(builtin_config("yolov7-training"), names=NAMES)), path)
        v7 = to_deploy(load_model(path).model)
    for label, model, n in (("yolov5n (real)", v5, args.v5_images), ("yolov7 deploy (generated)", v7, args.v7_images)):
        if not n:
            continue
        load_before = os.getloadavg()[0]
        coco = load_coco(data_file("coco"), limit=n)
        before = forward_only(model, coco, 8)
        seq = evaluate(model, coco, progress=False, pipeline=False)
        r = evaluate(model, coco, progress=False)
        base = 2 / (1 / before + 1 / forward_only(model, coco, 8))  # before and after: a drifting load cancels
        e2e, e2e_seq = r["images"] / r["seconds"], seq["images"] / seq["seconds"]
        same = r == {**seq, "seconds": r["seconds"]}  # the pipeline must not change a figure (tests/test_eval.py)
        rows.append([label, n, round(base, 2), round(e2e_seq, 2), round(e2e, 2), round(e2e_seq / base, 2),
                     round(e2e / base, 2), f"{r['map50']!r} / {r['map50_95']!r}" + ("" if same else " (DIFFERS)"),
                     f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"])
    return rows


if __name__ == "__main__":
    main()
