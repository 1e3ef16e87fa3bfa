"""Cost of the beyond-the-paper options: seconds of ``quantize_model`` on YOLOv5n (real weights, coco128
calibration) for nearest rounding (the paper), GPTQ rounding, GPTQ with bias correction and a storage budget,
each as a ratio to nearest rounding measured in the same run; and the calibration pass alone.
``--yolov7`` adds the generated YOLOv7 (92 convs, 36.9M weights) with GPTQ rounding (minutes).
"""

from __future__ import annotations

import argparse
import time

import torch

from sw.checkpoint import load_model
from sw.checkpoint.official import generate_weights
from sw.models import YoloModel, builtin_config
from sw.paths import data_file
from sw.quant.calibration import collect_input_stats
from sw.quant.model import QuantSpec, default_calib_dir, prepare, quantize_model

try:
    from .common import table
except ImportError:
    from common import table


def timed(model, spec: QuantSpec) -> float:
    t0 = time.perf_counter()
    quantize_model(model, spec, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calib-images", type=int, default=32, help="calibration images (default 32, as yoloq)")
    ap.add_argument("--yolov7", action="store_true", help="also time the generated YOLOv7 with GPTQ rounding")
    args = ap.parse_args()
    torch.manual_seed(0)
    v5n = load_model(data_file("yolov5n/yolov5n.pt")).model
    print(f"YOLOv5n, {args.calib_images} calibration images, torch threads {torch.get_num_threads()}")
    m = prepare(v5n, False)
    t0 = time.perf_counter()
    collect_input_stats(m, list(m.conv_layers()), default_calib_dir(), args.calib_images, progress=False)
    calib = time.perf_counter() - t0
    n = args.calib_images
    configs = [("pwlq 4b mix3, nearest (paper)", QuantSpec("pwlq", 4, "mix3")),
               ("pwlq 4b mix3, gptq", QuantSpec("pwlq", 4, "mix3", rounding="gptq", calib_images=n)),
               ("pwlq 4b mix3, gptq + bias correction",
                QuantSpec("pwlq", 4, "mix3", rounding="gptq", bias_correction=True, calib_images=n)),
               ("affine 4b mix3, nearest (paper)", QuantSpec("affine", 4, "mix3")),
               ("affine 4b mix3, gptq", QuantSpec("affine", 4, "mix3", rounding="gptq", calib_images=n)),
               ("pwlq mix3, budget 5.5 bits/weight, nearest",
                QuantSpec("pwlq", 4, "mix3", budget_bits=5.5, calib_images=n))]
    rows, base = [], {}
    for label, spec in configs:
        sec = timed(v5n, spec)
        ref = base.setdefault(spec.method, sec)
        rows.append([label, round(sec, 1), round(sec / ref, 1)])
    rows.append(["(calibration pass alone)", round(calib, 1), ""])
    if args.yolov7:
        v7 = generate_weights(YoloModel(builtin_config("yolov7-training")), seed=0)
        near = timed(v7, QuantSpec("pwlq", 4, "mix3"))
        gptq = timed(v7, QuantSpec("pwlq", 4, "mix3", rounding="gptq", calib_images=n))
        rows += [["YOLOv7 (generated) pwlq 4b mix3, nearest", round(near, 1), 1.0],
                 ["YOLOv7 (generated) pwlq 4b mix3, gptq", round(gptq, 1), round(gptq / near, 1)]]
    print(table(["configuration", "quantize_model s", "x nearest, same method"], rows))


if __name__ == "__main__":
    main()
