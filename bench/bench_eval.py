"""Evaluation throughput (images/s) for yolov5n (real) and YOLOv7 (generated weights), against forward-only.

Forward-only is the model's forward pass alone on the same letterboxed batches (decoded beforehand). The ratio
says how much of the end-to-end time (decode, forward, NMS, scoring) is the network itself; "sequential" is the
evaluation without overlapping decoding, NMS and per-image scoring with the forward pass (``pipeline=False``).

The machine is shared and its load drifts, so the three are measured interleaved, not one after another:
``--repeats`` rounds, each running the sequential evaluation, the forward-only pass and the pipelined
evaluation back to back (S F P, S F P, ...). Each round's ratios divide that round's evaluations by the
forward-only pass between them. "CPU ratio" is the forward-only pass's CPU seconds over the pipelined
evaluation's (all threads): the share of the evaluation's CPU that is the network (CPU seconds leave out the time
spent waiting for a core, which wall time on a loaded machine does not). Printed: the median over rounds of each throughput and ratio, with its range
(min-max) in brackets, and the load average before and after. Every evaluation's figures must be the same
to the last digit (else "DIFFERS").
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
import statistics
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


def forward_only(model, batches) -> tuple[float, float]:
    """Images per second of the forward passes alone over ``batches`` (float, decoded beforehand), and their
    CPU seconds (all threads)."""
    with torch.inference_mode():
        model(batches[0])  # warm-up: allocator and kernel selection
        t0, c0 = time.perf_counter(), time.process_time()
        for x in batches:
            model(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - t0), time.process_time() - c0


def timed_evaluate(model, coco, **kwargs) -> tuple[dict, float]:
    """:func:`evaluate`'s result and its CPU seconds (all threads: decoding, NMS and scoring included)."""
    c0 = time.process_time()
    result = evaluate(model, coco, progress=False, **kwargs)
    return result, time.process_time() - c0


def spread(values: list[float]) -> str:
    """Median, and (min-max) over the rounds."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--v5-images", type=int, default=206)
    ap.add_argument("--v7-images", type=int, default=16, help="0: yolov5n only")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (S F P each); medians are printed")
    ap.add_argument("--busy", action="store_true",
                    help="measure everything beside one other torch process (bench_busy's default-settings loop)")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    rows = busy(lambda: measure(args)) if args.busy else measure(args)
    print(f"torch threads: {torch.get_num_threads()}; {args.repeats} interleaved rounds (sequential eval, "
          "forward-only, eval), median (min-max)" + ("; beside one other torch process" if args.busy else ""))
    print(table(["model", "images", "forward-only img/s (baseline)", "eval img/s, sequential", "eval img/s",
                 "ratio sequential", "ratio", "CPU ratio", "mAP@.5 / mAP@.5:.95", "load average"], rows))


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
        batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], 640, 32, 8)
        loaded = [x for x, _ in prefetch_batches(batches, coco.paths, 640, 32, sizes=coco.sizes, normalized=True)]
        fwd, seq, pipe, cpu_share, results = [], [], [], [], []
        for _ in range(args.repeats):
            s, _ = timed_evaluate(model, coco, pipeline=False)
            rate, fwd_cpu = forward_only(model, loaded)
            p, eval_cpu = timed_evaluate(model, coco)
            fwd.append(rate)
            seq.append(s["images"] / s["seconds"])
            pipe.append(p["images"] / p["seconds"])
            cpu_share.append(fwd_cpu / eval_cpu)
            results += [s, p]
        r = results[-1]
        same = all(x == {**r, "seconds": x["seconds"]} for x in results)  # the pipeline must not change a figure
        rows.append([label, n, spread(fwd), spread(seq), spread(pipe),
                     spread([s / f for s, f in zip(seq, fwd)]), spread([p / f for p, f in zip(pipe, fwd)]),
                     spread(cpu_share),
                     f"{r['map50']!r} / {r['map50_95']!r}" + ("" if same else " (DIFFERS)"),
                     f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"])
    return rows


if __name__ == "__main__":
    main()
