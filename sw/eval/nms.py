"""Class-aware non-maximum suppression with YOLOv7 test.py semantics, in numpy (no torchvision).

Candidates: objectness > conf, then every class whose obj*cls score > conf (multi-label). At most ``max_nms``
highest-scoring candidates enter greedy NMS. Greedy NMS visits boxes in descending score order and each kept
box suppresses same-class boxes with IoU > ``iou_thres``; that equals per-class NMS merged by score, so the
walk stops as soon as ``max_det`` boxes are kept.

All of it is numpy on one thread: it runs beside the forward pass (sw.eval.coco's pipeline), where torch
operations would wake torch's worker threads and compete with the forward pass for the cores.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_NMS = 30000


BLOCK = 256  # candidates examined at once, in score order


def _iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for each row i (xyxy). Element for element the same arithmetic as a
    pairwise IoU matrix, so the same values, for the pairs that matter only."""
    lt = np.maximum(a[:, :2], b[:, :2])
    rb = np.minimum(a[:, 2:], b[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]  # not .prod(): numpy's reduction over an axis of 2 is many times slower
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):  # two empty boxes: NaN, which suppresses nothing
        return inter / (area_a + area_b - inter)


def greedy_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thres: float, max_det: int) -> np.ndarray:
    """Indices kept, in descending score order, at most ``max_det``; boxes of different classes never interact.

    The greedy walk, a block of :data:`BLOCK` candidates at a time: a block's candidates are first checked
    against every box kept so far, then the survivors against each other in score order; the same boxes are
    kept as visiting them one by one, with a few numpy calls per block instead of per kept box. IoUs are
    computed only for pairs of the same class (most pairs are not).
    """
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    kept: list[int] = []
    for start in range(0, len(order), BLOCK):
        b, c = boxes[start:start + BLOCK], classes[start:start + BLOCK]
        alive = np.ones(len(b), dtype=bool)
        if kept:
            k = np.asarray(kept)
            ki, bj = np.nonzero(classes[k][:, None] == c[None, :])
            alive[bj[_iou_pairs(boxes[k[ki]], b[bj]) > iou_thres]] = False
        cand = np.flatnonzero(alive)
        if not len(cand):
            continue
        bc, cc = b[cand], c[cand]
        i, j = np.nonzero(np.triu(cc[:, None] == cc[None, :], 1))  # i < j: only earlier boxes suppress later ones
        hit = _iou_pairs(bc[i], bc[j]) > iou_thres
        suppresses = np.zeros((len(cand), len(cand)), dtype=bool)
        suppresses[i[hit], j[hit]] = True
        live = np.ones(len(cand), dtype=bool)
        for i in range(len(cand)):
            if live[i]:
                kept.append(start + int(cand[i]))
                if len(kept) == max_det:
                    return order[np.asarray(kept, dtype=np.int64)]
                live[i + 1:] &= ~suppresses[i, i + 1:]
    return order[np.asarray(kept, dtype=np.int64)]


def candidates(x: np.ndarray, conf_thres: float) -> np.ndarray:
    """One image's NMS candidates from its predictions ``x`` ([anchors, 5 + nc]: xywh, objectness, class
    scores): [n, 6] (x1, y1, x2, y2, obj*cls score, class), in anchor then class order. The objectness filter
    comes first, so the class scores are formed only for the few anchors that pass it."""
    x = x[x[:, 4] > conf_thres]
    cls_scores = x[:, 5:] * x[:, 4:5]
    i, j = np.nonzero(cls_scores > conf_thres)
    xy, half = x[i, :2], x[i, 2:4] / 2
    return np.concatenate((xy - half, xy + half, cls_scores[i, j, None], j[:, None].astype(x.dtype)), 1)


def non_max_suppression(pred: torch.Tensor | np.ndarray, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        max_det: int = 300) -> list[torch.Tensor]:
    """Per image, a [n, 6] tensor of (x1, y1, x2, y2, score, class) sorted by descending score."""
    out = []
    for x in (pred.numpy() if isinstance(pred, torch.Tensor) else pred):
        cand = candidates(x, conf_thres)
        if len(cand) > MAX_NMS:
            cand = cand[np.argsort(-cand[:, 4], kind="stable")[:MAX_NMS]]
        keep = greedy_nms(cand[:, :4], cand[:, 4], cand[:, 5], iou_thres, max_det)
        out.append(torch.from_numpy(cand[keep]))
    return out
