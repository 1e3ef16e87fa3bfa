"""COCO evaluation of a detector: YOLOv7 test.py conventions, mAP from pycocotools.

:func:`evaluate` takes any callable mapping a float NCHW batch in [0, 1] to decoded predictions
``[n, anchors, 5 + nc]``, so float, fake-quantized and hardware-exact models are measured by the same ruler.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..errors import DataNotFoundError
from .boxes import unletterbox
from .coco_classes import COCO80_TO_91, COCO91_TO_80
from .images import prefetch_batches, shape_batches
from .metrics import match_predictions, precision_recall_at_max_f1
from .nms import non_max_suppression

ANNOTATIONS = "annotations/instances_val2017.json"
IMAGES = "images/val2017"


@dataclass
class CocoSubset:
    """A COCO root in the standard layout, restricted to images that are present."""

    root: Path
    annotation_file: Path
    paths: dict[int, Path]
    sizes: dict[int, tuple[int, int]]                          # image id -> (h, w)
    targets: dict[int, tuple[torch.Tensor, torch.Tensor]]      # image id -> (xyxy boxes, class 0..79), no crowd

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.paths)


def load_coco(root: str | Path, limit: int | None = None) -> CocoSubset:
    """Read ``annotations/instances_val2017.json`` and ``images/val2017/`` under ``root``."""
    root = Path(root)
    ann_file, img_dir = root / ANNOTATIONS, root / IMAGES
    for p, what in ((ann_file, "COCO annotation file"), (img_dir, "COCO image folder")):
        if not p.exists():
            raise DataNotFoundError(f"{what} missing: {p} (expected the standard COCO layout under {root})")
    try:
        data = json.loads(ann_file.read_text())
        images = {im["id"]: im for im in data["images"]}
        annotations = data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataNotFoundError(f"{ann_file}: not a COCO instances file ({e})") from e
    paths, sizes = {}, {}
    for image_id in sorted(images):
        p = img_dir / images[image_id]["file_name"]
        if p.exists():
            paths[image_id] = p
            sizes[image_id] = (images[image_id]["height"], images[image_id]["width"])
        if limit and len(paths) >= limit:
            break
    if not paths:
        raise DataNotFoundError(f"no images of {ann_file.name} found in {img_dir}")
    boxes: dict[int, list] = {i: [] for i in paths}
    for a in annotations:
        if a["image_id"] in boxes and not a.get("iscrowd", 0) and a["category_id"] in COCO91_TO_80:
            x, y, w, h = a["bbox"]
            if w > 0 and h > 0:
                boxes[a["image_id"]].append((x, y, x + w, y + h, COCO91_TO_80[a["category_id"]]))
    targets = {}
    for i, rows in boxes.items():
        t = torch.tensor(rows, dtype=torch.float64).view(-1, 5)
        targets[i] = (t[:, :4], t[:, 4])
    return CocoSubset(root, ann_file, paths, sizes, targets)


def detect(predict: Callable[[torch.Tensor], torch.Tensor], coco: CocoSubset, *, img_size: int = 640,
           stride: int = 32, conf_thres: float = 0.001, iou_thres: float = 0.65, max_det: int = 300,
           batch_size: int = 8, progress: bool = True, desc: str = "eval") -> dict[int, torch.Tensor]:
    """Detections per image id, [n, 6] (x1, y1, x2, y2, score, class) in original-image pixels."""
    batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], img_size, stride, batch_size)
    results = {}
    bar = tqdm(total=len(coco.paths), desc=desc, unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for images, items in prefetch_batches(batches, coco.paths, img_size, stride):
            pred = predict(images.float() / 255.0)
            for det, it in zip(non_max_suppression(pred, conf_thres, iou_thres, max_det), items):
                det = det.double()
                det[:, :4] = unletterbox(det[:, :4], it.gain, it.pad, it.orig_hw)
                results[it.image_id] = det
            bar.update(len(items))
    bar.close()
    return results


def _coco_map(coco: CocoSubset, detections: dict[int, torch.Tensor]) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    records = []
    for image_id, det in detections.items():
        for x1, y1, x2, y2, score, cls in det.tolist():
            records.append({"image_id": image_id, "category_id": COCO80_TO_91[int(cls)],
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                            "score": round(score, 5)})
    if not records:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress we do not want
        gt = COCO(str(coco.annotation_file))
        dt = gt.loadRes(records)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted(detections)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def score(coco: CocoSubset, detections: dict[int, torch.Tensor]) -> dict:
    """P and R (YOLOv7 style, at max mean F1), mAP@.5 and mAP@.5:.95 (pycocotools)."""
    tps, confs, classes, target_cls = [], [], [], []
    for image_id, det in detections.items():
        gt_boxes, gt_cls = coco.targets[image_id]
        tps.append(match_predictions(det, gt_boxes, gt_cls))
        confs.append(det[:, 4].numpy())
        classes.append(det[:, 5].numpy())
        target_cls.append(gt_cls.numpy())
    p, r = precision_recall_at_max_f1(*(np.concatenate(x) for x in (tps, confs, classes, target_cls)))
    map50, map50_95 = _coco_map(coco, detections)
    return {"precision": p, "recall": r, "map50": map50, "map50_95": map50_95}


def evaluate(predict, coco: CocoSubset, **kwargs) -> dict:
    """Detect and score; adds ``images`` and ``seconds`` (wall time of both)."""
    t0 = time.perf_counter()
    detections = detect(predict, coco, **kwargs)
    result = score(coco, detections)
    result.update(images=len(detections), seconds=round(time.perf_counter() - t0, 2))
    return result


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of evaluation results, one row per (label, result)."""
    head = "| model | images | P | R | mAP@.5 | mAP@.5:.95 | seconds |\n|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {label} | {r['images']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.3f} | "
        f"{r['map50_95']:.3f} | {r['seconds']:.1f} |\n" for label, r in rows)
