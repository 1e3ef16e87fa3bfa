"""pycocotools' ``COCOeval.accumulate``, the same arrays at a fraction of the cost.

``accumulate`` is the last per-evaluation step of COCO scoring, and pycocotools runs it as Python loops: per
category, area range, detection limit and IoU threshold, a Python loop over the detections for the precision
envelope and another over the 101 recall points (0.8 CPU s of the 206 images' evaluation). :func:`accumulate`
does the same steps, in the same order and with the same float64 operations, with the two inner loops as numpy
calls over the thresholds at once, and the images' detections gathered once for the three detection limits:

- the envelope (each precision raised to the highest one at a higher recall, pycocotools' backward loop of
  ``if pr[i] > pr[i-1]: pr[i-1] = pr[i]``) is a running maximum from the right, which takes the same values;
- the recall points' precisions and scores are read at ``searchsorted``'s indices, and left 0 from the first
  index past the last detection on, where pycocotools' loop stops at its IndexError.

tests/test_coco_scoring.py compares the precision, recall and score arrays and the summary stats with
pycocotools' with ==, on real detections, images made to hit each matching rule and random crowded images.
"""

from __future__ import annotations

import datetime

import numpy as np


def accumulate(ev) -> None:
    """Fill ``ev.eval`` (a pycocotools ``COCOeval`` whose ``evalImgs`` and ``_paramsEval`` are set, as its
    ``evaluate`` leaves them) as ``ev.accumulate()`` would, without its printing."""
    p = ev.params
    p.catIds = p.catIds if p.useCats == 1 else [-1]
    T, R, K, A, M = len(p.iouThrs), len(p.recThrs), len(p.catIds) if p.useCats else 1, len(p.areaRng), len(p.maxDets)
    precision = -np.ones((T, R, K, A, M))  # -1 for the precision of absent categories
    recall = -np.ones((T, K, A, M))
    scores = -np.ones((T, R, K, A, M))
    pe = ev._paramsEval
    set_k, set_a = set(pe.catIds if pe.useCats else [-1]), set(map(tuple, pe.areaRng))
    set_m, set_i = set(pe.maxDets), set(pe.imgIds)
    k_list = [n for n, k in enumerate(p.catIds) if k in set_k]
    m_list = [m for m in p.maxDets if m in set_m]
    a_list = [n for n, a in enumerate(map(tuple, p.areaRng)) if a in set_a]
    i_list = [n for n, i in enumerate(p.imgIds) if i in set_i]
    I0, A0 = len(pe.imgIds), len(pe.areaRng)
    for k, k0 in enumerate(k_list):
        for a, a0 in enumerate(a_list):
            at = k0 * A0 * I0 + a0 * I0
            E = [e for e in (ev.evalImgs[at + i] for i in i_list) if e is not None]
            if not E:
                continue
            gt_ignore = np.concatenate([e["gtIgnore"] for e in E])
            npig = np.count_nonzero(gt_ignore == 0)
            if npig == 0:
                continue
            # every image's detections once; each limit takes each image's first max_det of them, in order
            all_scores = np.concatenate([e["dtScores"] for e in E])
            all_matches = np.concatenate([e["dtMatches"] for e in E], axis=1)
            all_ignore = np.concatenate([e["dtIgnore"] for e in E], axis=1)
            rank = np.concatenate([np.arange(len(e["dtScores"])) for e in E])
            for m, max_det in enumerate(m_list):
                first = rank < max_det
                dt_scores = all_scores[first]
                inds = np.argsort(-dt_scores, kind="mergesort")  # pycocotools' (and Matlab's) order of ties
                dt_scores_sorted = dt_scores[inds]
                dtm = all_matches[:, first][:, inds]
                dt_ig = all_ignore[:, first][:, inds]
                tps = np.logical_and(dtm, np.logical_not(dt_ig))
                fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
                tp = np.cumsum(tps, axis=1).astype(dtype=float)
                fp = np.cumsum(fps, axis=1).astype(dtype=float)
                nd = tp.shape[1]
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if nd else 0
                if not nd:
                    precision[:, :, k, a, m] = scores[:, :, k, a, m] = 0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the envelope
                at_recall = np.stack([np.searchsorted(rc[t], p.recThrs, side="left") for t in range(T)])
                found = at_recall < nd  # per threshold a prefix: the indices do not decrease
                at_recall[~found] = 0
                precision[:, :, k, a, m] = np.where(found, np.take_along_axis(pr, at_recall, axis=1), 0.0)
                scores[:, :, k, a, m] = np.where(found, dt_scores_sorted[at_recall], 0.0)
    ev.eval = {"params": p, "counts": [T, R, K, A, M], "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
               "precision": precision, "recall": recall, "scores": scores}
