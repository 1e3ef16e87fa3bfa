"""COCO scoring cost: the evaluation's Scorer against pycocotools' own COCOeval on the same detections.

YOLOv5n's detections of the COCO subset (conf 0.001, up to 300 per image) are made once; then, in turns
(``--rounds`` times each, the best taken: a shared machine), the CPU seconds of

- pycocotools: one ``COCOeval`` over all the images (``loadRes``, ``evaluate``, ``accumulate``, ``summarize``);
- Scorer: ``Scorer.add`` batch by batch (8 images, as the evaluation feeds it; P/R matching included) and
  ``Scorer.result`` (``sw.eval.coco_accumulate.accumulate``, then pycocotools' own ``summarize``);
- the per-image evaluation alone: pycocotools' ``evaluate`` against ``sw.eval.coco_match.evaluate_images``
  (compiled, and its Python fallback).

Both give the same mAP to the last digit (printed; tests/test_coco_scoring.py compares every array with ==).
The load average before and after is printed beside the figures.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import contextlib
import io
import os
import time

import numpy as np

from sw.checkpoint import load_model
from sw.eval import coco_match
from sw.eval.coco import Scorer, coco_records, coco_rows, detect, load_coco
from sw.paths import data_file


def cpu(fn, rounds: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(rounds):
        t0 = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=206)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = load_coco(data_file("coco"), limit=args.images)
    dets = detect(load_model(data_file("yolov5n/yolov5n.pt")).model, coco, progress=False)
    items = list(dets.items())
    load_before = os.getloadavg()[0]

    def reference(stop_after_evaluate=False):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = coco.gt
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(coco_records(items)), "bbox")
            ev.params.imgIds = sorted(dets)
            ev.evaluate()
            if not stop_after_evaluate:
                ev.accumulate()
                ev.summarize()
        return ev

    def ours():
        scorer = Scorer(coco)
        for start in range(0, len(items), 8):
            scorer.add(items[start:start + 8])
        return scorer.result()

    scorer = Scorer(coco)
    rows = np.array([r for image_id, det in items for r in coco_rows(image_id, det)], dtype=np.float64)
    image_ids, cat_ids = np.unique(list(dets)), np.array(scorer.params.catIds)

    def per_image():
        return coco_match.evaluate_images(image_ids, cat_ids, scorer.gts, rows, 1, scorer.params)

    times = {"ref": [], "ours": [], "ref_eval": [], "eval": [], "eval_py": []}
    for _ in range(args.rounds):  # in turns: a drifting load hits both
        for key, fn in (("ref", reference), ("ours", ours), ("ref_eval", lambda: reference(True)),
                        ("eval", per_image)):
            times[key].append(cpu(fn, 1))
        with coco_match.disabled():
            times["eval_py"].append(cpu(per_image, 1))
    best = {k: min(t for t, _ in v) for k, v in times.items()}
    ref_stats, result = times["ref"][0][1].stats, times["ours"][0][1]
    same = (result["map50"], result["map50_95"]) == (ref_stats[1], ref_stats[0])
    print(table(["images", "pycocotools CPU s", "Scorer CPU s", "ratio", "per-image: evaluate CPU s",
                 "compiled CPU s", "ratio", "Python fallback CPU s", "mAP@.5 / mAP@.5:.95", "load average"],
                [[len(items), best["ref"], best["ours"], round(best["ref"] / best["ours"], 1), best["ref_eval"],
                  best["eval"], round(best["ref_eval"] / best["eval"], 1), best["eval_py"],
                  f"{result['map50']!r} / {result['map50_95']!r}" + ("" if same else " (DIFFERS)"),
                  f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"]]))


if __name__ == "__main__":
    main()
