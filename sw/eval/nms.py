"""Class-aware non-maximum suppression with YOLOv7 test.py semantics, in numpy (no torchvision).

Candidates: objectness > conf, then every class whose obj*cls score > conf (multi-label). At most ``max_nms``
highest-scoring candidates enter greedy NMS. Greedy NMS visits boxes in descending score order and each kept
box suppresses same-class boxes with IoU > ``iou_thres``; that equals per-class NMS merged by score, so the
walk stops as soon as ``max_det`` boxes are kept.
"""

from __future__ import annotations

import numpy as np
import torch

from .boxes import xywh2xyxy

MAX_NMS = 30000


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area + areas - inter)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float, max_det: int) -> np.ndarray:
    """Indices kept, in descending score order, at most ``max_det``; boxes of different classes never interact."""
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    members = {c: np.flatnonzero(classes == c) for c in np.unique(classes)}  # ascending = score order
    alive = np.ones(len(order), dtype=bool)
    keep = []
    start = 0
    while len(keep) < max_det:
        rest = alive[start:]
        if not rest.any():
            break
        i = start + int(rest.argmax())
        keep.append(i)
        alive[i] = False
        same = members[classes[i]]
        later = same[np.searchsorted(same, i, side="right"):]
        later = later[alive[later]]
        if len(later):
            alive[later[_iou_one(boxes[i], boxes[later]) > iou_thres]] = False
        start = i + 1
    return order[np.asarray(keep, dtype=np.int64)]


def non_max_suppression(pred: torch.Tensor, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        max_det: int = 300) -> list[torch.Tensor]:
    """Per image, a [n, 6] tensor of (x1, y1, x2, y2, score, class) sorted by descending score."""
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        cls_scores = x[:, 5:] * x[:, 4:5]
        i, j = (cls_scores > conf_thres).nonzero(as_tuple=True)
        cand = torch.cat((xywh2xyxy(x[i, :4]), cls_scores[i, j, None], j[:, None].float()), 1).numpy()
        if len(cand) > MAX_NMS:
            cand = cand[np.argsort(-cand[:, 4], kind="stable")[:MAX_NMS]]
        keep = greedy_nms(cand[:, :4], cand[:, 4], cand[:, 5], iou_thres, max_det)
        out.append(torch.from_numpy(cand[keep]))
    return out
