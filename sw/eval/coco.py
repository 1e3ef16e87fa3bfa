"""COCO evaluation of a detector: YOLOv7 test.py conventions, mAP from pycocotools.

:func:`evaluate` takes any callable mapping a float NCHW batch in [0, 1] to decoded predictions
``[n, anchors, 5 + nc]``, so float, fake-quantized and hardware-exact models are measured by the same ruler.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
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


def _postprocess(pred: torch.Tensor, items, conf_thres: float, iou_thres: float, max_det: int):
    """NMS of one batch's predictions, boxes mapped back to original-image pixels: [(image id, [n, 6])]."""
    out = []
    with torch.inference_mode():
        for det, it in zip(non_max_suppression(pred, conf_thres, iou_thres, max_det), items):
            det = det.double()
            det[:, :4] = unletterbox(det[:, :4], it.gain, it.pad, it.orig_hw)
            out.append((it.image_id, det))
    return out


def detect(predict: Callable[[torch.Tensor], torch.Tensor], coco: CocoSubset, **kwargs) -> dict[int, torch.Tensor]:
    """Detections per image id, [n, 6] (x1, y1, x2, y2, score, class) in original-image pixels
    (keyword arguments: :func:`detect_many`'s)."""
    return detect_many({"": predict}, coco, **kwargs)[0][""]


def detect_many(predicts: dict[str, Callable[[torch.Tensor], torch.Tensor]], coco: CocoSubset, *,
                img_size: int = 640, stride: int = 32, conf_thres: float = 0.001, iou_thres: float = 0.65,
                max_det: int = 300, batch_size: int = 8, progress: bool = True, desc: str = "eval",
                pipeline: bool = True) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, float]]:
    """:func:`detect` for several models in one pass over the images (each batch decoded once, then run
    through every model): per model, its detections (the same as a pass of its own) and its forward seconds.

    With ``pipeline`` (default) the forward passes are the only work on this thread: the next batch is
    decoded and the previous batches' NMS runs in background threads meanwhile (numpy and the image decoder
    release the GIL). The detections are the same tensors as without it, in the same order.
    """
    batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], img_size, stride, batch_size)
    results: dict[str, dict[int, torch.Tensor]] = {tag: {} for tag in predicts}
    forward_s = dict.fromkeys(predicts, 0.0)
    bar = tqdm(total=len(coco.paths) * len(predicts), desc=desc, unit="img", disable=not progress, leave=False)

    def collect(tag, batch):
        for image_id, det in batch:
            results[tag][image_id] = det
        bar.update(len(batch))

    post = ThreadPoolExecutor(max_workers=1) if pipeline else None
    pending: deque = deque()
    try:
        with torch.inference_mode():
            for images, items in prefetch_batches(batches, coco.paths, img_size, stride):
                x = images.float() / 255.0
                for tag, predict in predicts.items():
                    t0 = time.perf_counter()
                    pred = predict(x)
                    forward_s[tag] += time.perf_counter() - t0
                    if post is None:
                        collect(tag, _postprocess(pred, items, conf_thres, iou_thres, max_det))
                        continue
                    pending.append((tag, post.submit(_postprocess, pred, items, conf_thres, iou_thres, max_det)))
                    while len(pending) > 2 or (pending and pending[0][1].done()):  # bounded: predictions are large
                        tag_done, future = pending.popleft()
                        collect(tag_done, future.result())
            while pending:
                tag_done, future = pending.popleft()
                collect(tag_done, future.result())
    finally:
        if post is not None:
            post.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return results, forward_s


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


def evaluate_many(predicts: dict[str, Callable], coco: CocoSubset, **kwargs) -> dict[str, dict]:
    """:func:`evaluate` of several models in one pass over the images (:func:`detect_many`); the same results
    as separate evaluations. Each result's ``seconds`` is its own forward passes plus its scoring (the
    shared decoding and NMS overlap them)."""
    detections, forward_s = detect_many(predicts, coco, **kwargs)
    results = {}
    for tag, dets in detections.items():
        t0 = time.perf_counter()
        result = score(coco, dets)
        result.update(images=len(dets), seconds=round(forward_s[tag] + time.perf_counter() - t0, 2))
        results[tag] = result
    return results


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of evaluation results, one row per (label, result)."""
    head = "| model | images | P | R | mAP@.5 | mAP@.5:.95 | seconds |\n|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {label} | {r['images']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.3f} | "
        f"{r['map50_95']:.3f} | {r['seconds']:.1f} |\n" for label, r in rows)
