"""Forward-pass time of the four models ``yoloq hw validate`` evaluates, on the same real images.

YOLOv5n (real checkpoint), 4-bit PWLQ mix3, A = 8: FP (the checkpoint as loaded), SW (fake-quantized
weights), HW (MAC-exact: integer accumulators, float epilogue) and INT (the integer-only network). Baseline
measured in the same run: FP's forward pass on the same letterboxed batches. HW and INT run twice: as
shipped, and on the torch path alone (:func:`sw.intref.fused.disabled`: what they cost before the fused
kernels, and wherever no C compiler exists). The passes go round the models in turn, ``--repeat`` rounds;
each model's best pass over the images is printed, wall and process CPU seconds (all threads; steadier than
wall on a shared machine), per image and as ratios to FP's. That HW's and INT's outputs are exact is tested
(tests/test_intnet.py, tests/test_intref_contract.py, tests/test_intref_fused.py), not here.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import os
import time
from contextlib import nullcontext

import torch

from sw.checkpoint import load_model
from sw.eval.coco import load_coco
from sw.eval.images import prefetch_batches, shape_batches
from sw.intref import fused
from sw.intref.intnet import IntegerNetwork
from sw.intref.validate import HardwareFormat, hardware_model
from sw.paths import data_file
from sw.quant.model import QuantSpec, quantize_model


def forward_seconds(models: dict, batches: list[torch.Tensor], repeat: int) -> dict[str, tuple[float, float]]:
    """Best wall and best process CPU time of ``repeat`` passes over ``batches`` per model (``name: (model,
    context)``, the pass run inside ``context()``), the models taking turns so that a change in the machine's
    load falls on all of them."""
    best = {name: (float("inf"), float("inf")) for name in models}
    with torch.inference_mode():
        for model, context in models.values():
            with context():
                model(batches[0][:1])  # warm-up: allocator and kernel selection
        for _ in range(repeat):
            for name, (model, context) in models.items():
                with context():
                    t0, c0 = time.perf_counter(), time.process_time()
                    for x in batches:
                        model(x)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=16, help="COCO subset images (default 16)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--calib-images", type=int, default=8, help="calibration images (scales only; no effect on speed)")
    args = ap.parse_args()
    fp = load_model(data_file("yolov5n/yolov5n.pt")).model.eval()
    qm = quantize_model(fp, QuantSpec("pwlq", 4, "mix3"), progress=False)
    fmt = HardwareFormat(calib_images=args.calib_images)
    hw, _, calibration = hardware_model(qm, fmt, data_file("coco128/images/train2017"), progress=False)
    intnet = IntegerNetwork(qm, calibration, fmt.act_bits, fmt.scale_bits)
    models = {"FP": (fp, nullcontext), "SW (fake-quant)": (qm.model, nullcontext), "HW (MAC-exact)": (hw, nullcontext),
              "INT (integer-only)": (intnet, nullcontext)}
    if fused.available():  # the baseline: the same models without the fused kernels
        models.update({"HW, torch path": (hw, fused.disabled), "INT, torch path": (intnet, fused.disabled)})
    coco = load_coco(data_file("coco"), limit=args.images)
    ids = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], 640, 32, args.batch)
    batches = [images.float() / 255.0 for images, _ in prefetch_batches(ids, coco.paths, 640, 32)]
    load_before = os.getloadavg()[0]
    seconds = forward_seconds(models, batches, args.repeat)
    fp_wall, fp_cpu = seconds["FP"]
    n = args.images
    rows = [[name, round(w, 2), round(w / n, 3), round(w / fp_wall, 2), round(c, 2), round(c / n, 3),
             round(c / fp_cpu, 2)] for name, (w, c) in seconds.items()]
    print(f"YOLOv5n at 640, {args.images} images in {len(batches)} batches of <= {args.batch}; best of {args.repeat}; "
          f"torch threads {torch.get_num_threads()}; load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print(table(["model", "forward s (wall)", "wall s/img", "wall ratio to FP", "CPU s", "CPU s/img",
                 "CPU ratio to FP"], rows))


if __name__ == "__main__":
    main()
