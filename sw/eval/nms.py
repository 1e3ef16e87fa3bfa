"""Class-aware non-maximum suppression with YOLOv7 test.py semantics, in numpy (no torchvision).

Candidates: objectness > conf, then every class whose obj*cls score > conf (multi-label). At most ``max_nms``
highest-scoring candidates enter greedy NMS. Greedy NMS visits boxes in descending score order and each kept
box suppresses same-class boxes with IoU > ``iou_thres``; that equals per-class NMS merged by score, so the
walk stops as soon as ``max_det`` boxes are kept.

It runs on one thread, beside the forward pass (sw.eval.coco's pipeline), where torch operations would wake
torch's worker threads and compete with the forward pass for the cores; every CPU second it takes is lost to the
forward pass. So a batch's whole NMS (non-finite rows, candidates, their stable score order, the greedy walk) is
one compiled C call, built on first use as every compiled kernel of yoloq is (:mod:`sw.ckernel`): the same
float32 operations as the numpy path (:func:`candidates`, :func:`greedy_nms`), which runs where no compiler
works; tests compare both bit for bit.
"""

from __future__ import annotations

import ctypes
from string import Template

import numpy as np
import torch

from ..ckernel import CompiledKernel

MAX_NMS = 30000

# The kernel's C, once per element type: $real is float for float32 predictions, double for float64 ones (the HW
# and INT passes'); $t names that type's functions.
_TYPED = r"""
/* numpy's maximum and minimum: a NaN in either operand is the result */
static inline $real np_max_$t($real a, $real b) { return (a >= b || a != a) ? a : b; }
static inline $real np_min_$t($real a, $real b) { return (a <= b || a != a) ? a : b; }

/* _iou_pairs of one pair, operation for operation (0/0 is NaN, which suppresses nothing) */
static inline $real iou_$t(const $real *a, const $real *b) {
    $real w = np_max_$t(np_min_$t(a[2], b[2]) - np_max_$t(a[0], b[0]), ($real)0);
    $real h = np_max_$t(np_min_$t(a[3], b[3]) - np_max_$t(a[1], b[1]), ($real)0);
    $real inter = w * h;
    $real area_a = (a[2] - a[0]) * (a[3] - a[1]);
    $real area_b = (b[2] - b[0]) * (b[3] - b[1]);
    return inter / (area_a + area_b - inter);
}

/* indices 0..n-1 stably sorted by descending score (np.argsort(-score, kind="stable")): bottom-up merge sort */
static void sort_descending_$t(int64_t *idx, int64_t *tmp, const $real *score, int64_t n) {
    for (int64_t i = 0; i < n; ++i) idx[i] = i;
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = score[idx[j]] > score[idx[i]] ? idx[j++] : idx[i++];
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, sizeof(int64_t) * n);
    }
}

/* NMS of one image's predictions x [n_anchor, n_col] (xywh, objectness, n_col - 5 class scores). A row holding
   a NaN or infinity counts in *dropped and is read as zeros. Kept rows (x1, y1, x2, y2, score, class) go to out
   [min(max_det, max_nms, candidates), 6], their number to *n_out. Returns 0, or -1 where memory ran out. */
int nms_image_$t(const $real *x, int64_t n_anchor, int64_t n_col, $real conf, $real iou_thres, int64_t max_det,
                 int64_t max_nms, $real *out, int64_t *n_out, int64_t *dropped) {
    const int64_t nc = n_col - 5;
    int rc = -1;
    int64_t n_rows = 0, n = 0, kept = 0;
    const $real **rows = malloc(sizeof($real *) * (n_anchor > 0 ? n_anchor : 1));
    $real *zeros = calloc(n_col, sizeof($real)), *box = NULL, *score = NULL, *cls = NULL;
    int64_t *idx = NULL, *tmp = NULL, *keep = NULL, *then = NULL, *first = malloc(sizeof(int64_t) * (nc > 0 ? nc : 1)),
            *last = malloc(sizeof(int64_t) * (nc > 0 ? nc : 1));
    int32_t *label = NULL;
    if (!rows || !zeros || !first || !last) goto done;
    for (int64_t a = 0; a < n_anchor; ++a) {   /* objectness filter, non-finite rows as zeros */
        const $real *r = x + a * n_col;
        int finite = 1;
        for (int64_t c = 0; c < n_col; ++c) finite &= isfinite(r[c]) != 0;
        if (!finite) { ++*dropped; r = zeros; }
        if (r[4] > conf) rows[n_rows++] = r;
    }
    for (int64_t a = 0; a < n_rows; ++a)
        for (int64_t c = 0; c < nc; ++c) n += rows[a][5 + c] * rows[a][4] > conf;
    box = malloc(sizeof($real) * 4 * (n ? n : 1)); score = malloc(sizeof($real) * (n ? n : 1));
    cls = malloc(sizeof($real) * (n ? n : 1)); idx = malloc(sizeof(int64_t) * (n ? n : 1));
    tmp = malloc(sizeof(int64_t) * (n ? n : 1)); keep = malloc(sizeof(int64_t) * (n ? n : 1));
    then = malloc(sizeof(int64_t) * (n ? n : 1)); label = malloc(sizeof(int32_t) * (n ? n : 1));
    if (!box || !score || !cls || !idx || !tmp || !keep || !then || !label) goto done;
    n = 0;
    for (int64_t a = 0; a < n_rows; ++a) {     /* candidates in anchor, then class order */
        const $real *r = rows[a];
        for (int64_t c = 0; c < nc; ++c) {
            $real s = r[5 + c] * r[4];
            if (s > conf) {
                $real hw = r[2] / 2, hh = r[3] / 2;
                box[4 * n] = r[0] - hw; box[4 * n + 1] = r[1] - hh;
                box[4 * n + 2] = r[0] + hw; box[4 * n + 3] = r[1] + hh;
                score[n] = s; cls[n] = ($real)c; label[n] = (int32_t)c; ++n;
            }
        }
    }
    sort_descending_$t(idx, tmp, score, n);
    if (n > max_nms) n = max_nms;              /* the max_nms best, still in score order */
    /* the greedy walk; a candidate is checked against the kept boxes of its class only, oldest (highest score,
       likeliest to suppress) first: first[c] is class c's first kept box, then[k] the next after kept box k in
       its class (-1: none), last[c] its latest */
    for (int64_t c = 0; c < nc; ++c) first[c] = last[c] = -1;
    for (int64_t i = 0; i < n && kept < max_det; ++i) {
        const int64_t b = idx[i];
        const int32_t c = label[b];
        int alive = 1;
        for (int64_t k = first[c]; k >= 0 && alive; k = then[k])
            if (iou_$t(box + 4 * keep[k], box + 4 * b) > iou_thres) alive = 0;
        if (alive) {
            then[kept] = -1;
            if (last[c] >= 0) then[last[c]] = kept; else first[c] = kept;
            last[c] = kept;
            keep[kept++] = b;
        }
    }
    for (int64_t k = 0; k < kept; ++k) {
        memcpy(out + 6 * k, box + 4 * keep[k], 4 * sizeof($real));
        out[6 * k + 4] = score[keep[k]]; out[6 * k + 5] = cls[keep[k]];
    }
    *n_out = kept;
    rc = 0;
done:
    free(rows); free(zeros); free(box); free(score); free(cls); free(idx); free(tmp); free(keep);
    free(then); free(label); free(first); free(last);
    return rc;
}
"""

_SOURCE = "#include <stdint.h>\n#include <stdlib.h>\n#include <string.h>\n#include <math.h>\n" + "".join(
    Template(_TYPED).substitute(real=real, t=t) for real, t in (("float", "f32"), ("double", "f64")))


def _declare(library: ctypes.CDLL) -> None:
    for name, real in (("nms_image_f32", ctypes.c_float), ("nms_image_f64", ctypes.c_double)):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, real, real, ctypes.c_int64,
                             ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]


KERNEL = CompiledKernel("nms", _SOURCE, "the NMS kernel", "the numpy NMS", _declare)
available, disabled = KERNEL.available, KERNEL.disabled
_TYPES = {np.dtype(np.float32): ("nms_image_f32", np.float32),
          np.dtype(np.float64): ("nms_image_f64", np.float64)}


BLOCK = 256  # candidates examined at once, in score order


def _iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a[i]`` with ``b[i]`` for each row i (xyxy). Element for element the same arithmetic as a
    pairwise IoU matrix, so the same values, for the pairs that matter only."""
    # two empty boxes: NaN, which suppresses nothing; infinite corners (overflowing boxes): inf or NaN as well
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lt = np.maximum(a[:, :2], b[:, :2])
        rb = np.minimum(a[:, 2:], b[:, 2:])
        wh = np.clip(rb - lt, 0, None)
        inter = wh[:, 0] * wh[:, 1]  # not .prod(): numpy's reduction over an axis of 2 is many times slower
        area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
        area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
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
    with np.errstate(over="ignore"):  # huge boxes' corners become infinite, which the suppression handles
        cls_scores = x[:, 5:] * x[:, 4:5]
        i, j = np.nonzero(cls_scores > conf_thres)
        xy, half = x[i, :2], x[i, 2:4] / 2
        return np.concatenate((xy - half, xy + half, cls_scores[i, j, None], j[:, None].astype(x.dtype)), 1)


def suppress(pred: torch.Tensor | np.ndarray, conf_thres: float = 0.001, iou_thres: float = 0.65,
             max_det: int = 300) -> tuple[list[torch.Tensor], int]:
    """:func:`non_max_suppression`, and the number of prediction rows that held a NaN or infinite value: those
    are read as zero rows (below any positive threshold), so they are never scored."""
    pred = pred.numpy() if isinstance(pred, torch.Tensor) else pred
    library = KERNEL.library()
    if library is None or pred.dtype not in _TYPES or max_det < 1 or MAX_NMS < 1 or pred.shape[-1] < 5:
        return _suppress_numpy(pred, conf_thres, iou_thres, max_det)
    pred, (name, real) = np.ascontiguousarray(pred), _TYPES[pred.dtype]
    function = getattr(library, name)
    with np.errstate(over="ignore"):  # compared in the predictions' type, as numpy compares them (too large: inf)
        conf, iou = real(conf_thres), real(iou_thres)
    out = np.empty((len(pred), max(1, min(max_det, MAX_NMS, pred.shape[1] * (pred.shape[2] - 5))), 6),
                   dtype=pred.dtype)
    counts, dropped = np.zeros(len(pred), dtype=np.int64), np.zeros(1, dtype=np.int64)
    for k, x in enumerate(pred):
        if function(x.ctypes.data, x.shape[0], x.shape[1], conf, iou, max_det, MAX_NMS, out[k].ctypes.data,
                    counts[k:].ctypes.data, dropped.ctypes.data):
            raise MemoryError(f"NMS of {x.shape[0]} predictions: out of memory")
    return [torch.from_numpy(out[k, :counts[k]].copy()) for k in range(len(pred))], int(dropped[0])


def _suppress_numpy(pred: np.ndarray, conf_thres: float, iou_thres: float, max_det: int):
    finite = np.isfinite(pred).all(axis=-1)
    dropped = int(finite.size - np.count_nonzero(finite))
    if dropped:  # zero rows fall below any positive score threshold
        pred = np.where(finite[..., None], pred, np.zeros((), dtype=pred.dtype))
    out = []
    for x in pred:
        cand = candidates(x, conf_thres)
        if len(cand) > MAX_NMS:
            cand = cand[np.argsort(-cand[:, 4], kind="stable")[:MAX_NMS]]
        keep = greedy_nms(cand[:, :4], cand[:, 4], cand[:, 5], iou_thres, max_det)
        out.append(torch.from_numpy(cand[keep]))
    return out, dropped


def non_max_suppression(pred: torch.Tensor | np.ndarray, conf_thres: float = 0.001, iou_thres: float = 0.65,
                        max_det: int = 300) -> list[torch.Tensor]:
    """Per image, a [n, 6] float32 tensor of (x1, y1, x2, y2, score, class) sorted by descending score (rows of
    ``pred`` holding a NaN or infinity read as zeros: :func:`suppress` counts them)."""
    return suppress(pred, conf_thres, iou_thres, max_det)[0]
