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


BLOCK = 256  # candidates examined at once, in score order


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b`` ([len(a), len(b)], xyxy)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # not .prod(): numpy's reduction over an axis of 2 is many times slower
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: NaN, which suppresses nothing
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float, max_det: int) -> np.ndarray:
    """Indices kept, in descending score order, at most ``max_det``; boxes of different classes never interact.

    The greedy walk, a block of :data:`BLOCK` candidates at a time: a block's candidates are first checked
    against every box kept so far (one IoU matrix), then the survivors against each other in score order
    (another); the same boxes are kept as visiting them one by one, with a few numpy calls per block instead
    of per kept box.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    kept: list[int] = []
    for start in range(0, len(order), BLOCK):
        b, c = boxes[start:start + BLOCK], classes[start:start + BLOCK]
        alive = np.ones(len(b), dtype=bool)
        if kept:
            k = np.asarray(kept)
            same = classes[k][:, None] == c[None, :]
            rows = same.any(1)
            if rows.any():
                alive &= ~((_iou_matrix(boxes[k[rows]], b) > iou_thres) & same[rows]).any(0)
        cand = np.flatnonzero(alive)
        if not len(cand):
            continue
        bc, cc = b[cand], c[cand]
        suppresses = (_iou_matrix(bc, bc) > iou_thres) & (cc[:, None] == cc[None, :])
        live = np.ones(len(cand), dtype=bool)
        for i in range(len(cand)):
            if live[i]:
                kept.append(start + int(cand[i]))
                if len(kept) == max_det:
                    return order[np.asarray(kept, dtype=np.int64)]
                live[i + 1:] &= ~suppresses[i, i + 1:]
    return order[np.asarray(kept, dtype=np.int64)]


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
