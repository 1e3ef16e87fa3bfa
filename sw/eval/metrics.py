"""Precision and recall as YOLOv7's test.py reports them: at the confidence where mean F1 over classes peaks.

Matching follows test.py: per image and class, each prediction (in score order) takes its best-IoU ground
truth if that IoU > 0.5 and the target is still free. Crowd annotations are not targets (as in YOLO labels).
"""

from __future__ import annotations

import numpy as np
import torch

from .boxes import box_iou


def match_predictions(pred: torch.Tensor, gt_boxes: torch.Tensor, gt_cls: torch.Tensor, iou_thres: float = 0.5) -> np.ndarray:
    """Boolean true-positive flag per prediction row of ``pred`` ([n, 6] xyxy, score, class)."""
    correct = np.zeros(len(pred), dtype=bool)
    if not len(pred) or not len(gt_boxes):
        return correct
    detected: set[int] = set()
    for c in torch.unique(gt_cls):
        ti = (gt_cls == c).nonzero(as_tuple=True)[0]
        pi = (pred[:, 5] == c).nonzero(as_tuple=True)[0]
        if not len(pi):
            continue
        ious, best = box_iou(pred[pi, :4], gt_boxes[ti]).max(1)
        for j in (ious > iou_thres).nonzero(as_tuple=True)[0].tolist():
            d = int(ti[best[j]])
            if d not in detected:
                detected.add(d)
                correct[int(pi[j])] = True
                if len(detected) == len(gt_boxes):
                    break
    return correct


def precision_recall_at_max_f1(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray):
    """Mean precision and recall over target classes at the confidence maximising mean F1 (1000-point grid)."""
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes = np.unique(target_cls)
    px = np.linspace(0, 1, 1000)
    p = np.zeros((len(classes), px.size))
    r = np.zeros((len(classes), px.size))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        n_l, n_p = int((target_cls == c).sum()), int(sel.sum())
        if n_p == 0 or n_l == 0:
            continue
        tpc = tp[sel].cumsum()
        fpc = (1 - tp[sel]).cumsum()
        r[ci] = np.interp(-px, -conf[sel], tpc / (n_l + 1e-16), left=0)
        p[ci] = np.interp(-px, -conf[sel], tpc / (tpc + fpc), left=1)
    if not len(classes):
        return 0.0, 0.0
    f1 = 2 * p * r / (p + r + 1e-16)
    i = int(f1.mean(0).argmax())
    return float(p[:, i].mean()), float(r[:, i].mean())
