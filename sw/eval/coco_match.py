"""pycocotools' per-image bbox evaluation, the same arrays at a fraction of the cost.

:func:`evaluate_images` gives, for a batch of images, what pycocotools' ``COCOeval.evaluate`` puts in
``evalImgs`` for iouType "bbox" with the default parameters (categories used): one entry per category, area range
and image, in that order, ``None`` where the image has neither a ground truth nor a detection of the category, else
a dict with the same keys, types, dtypes and values (``dtMatches``, ``gtMatches``, ``dtIgnore``, ``gtIgnore``,
ids and scores). pycocotools' own ``accumulate`` and ``summarize`` then give the same precision, recall and stats
(tests compare every field and array with ==).

The rules are COCO's (pycocotools' ``evaluateImg``), implemented here from their definition:

- detections of an (image, category) ranked by score, highest first, equal scores in result order (a stable
  sort), only the first ``maxDets[-1]`` kept;
- a ground truth is ignored in an area range when it is a crowd or its area lies outside the range; the ignored
  ones are ranked after the others, each group in annotation order;
- at each IoU threshold t each detection in rank order takes the ground truth of highest IoU, at least
  min(t, 1 - 1e-10), among those not yet taken (a crowd can be taken again); of equal IoUs the later ground truth
  in rank order; it looks at ignored ground truths only while it holds no other one (the scan stops at the first
  ignored one once it holds a kept one);
- a detection matched to an ignored ground truth is ignored; so is an unmatched detection whose area lies
  outside the range.

IoUs come from pycocotools' own C function (``pycocotools.mask.iou``, one call per image), so they are the same
doubles. The greedy matching, the hot loop (ten thresholds x detections x ground truths, four area ranges), runs
compiled: one C call per batch, built on first use with the system compiler and cached as every compiled kernel of yoloq is
(:mod:`sw.ckernel`). Where no compiler works the same loop runs in Python
(:func:`_match_python`; tests compare both with pycocotools).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from ..ckernel import CompiledKernel

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* COCO's greedy matching of problems p = 0..n_problems-1, one (image, category) each, at every area range and
   IoU threshold. Problem p: n_dt[p] detections (rank order) and n_gt[p] ground truths (annotation order); IoU of
   detection d and ground truth g at iou[iou_at[p] + g * iou_stride[p] + d]; detection arrays (ids, areas) from
   dt_at[p], ground-truth arrays (ids, areas, crowd flags) from gt_at[p]. start[t]: the least IoU of a match at
   threshold t. Outputs per problem and area range a (sizes D, G; T thresholds):
     dt_match  [a][t][d] at out_dt_at[p]: the matched ground truth's id, else 0
     dt_ignore [a][t][d] at out_dt_at[p]: matched to an ignored ground truth, or unmatched and outside the range
     gt_match  [a][t][j] at out_gt_at[p]: the id of the detection matched to ranked ground truth j, else 0
     gt_ignore [a][j], gt_order [a][j] at out_g_at[p]: ranked ground truth j's ignore flag and annotation index. */
void coco_match(int64_t n_problems, const int64_t *n_dt, const int64_t *n_gt, const int64_t *iou_at,
                const int64_t *iou_stride, const int64_t *dt_at, const int64_t *gt_at, const int64_t *out_dt_at,
                const int64_t *out_gt_at, const int64_t *out_g_at, const double *iou, const int64_t *dt_id,
                const double *dt_area, const int64_t *gt_id, const double *gt_area, const uint8_t *gt_crowd,
                int64_t n_thr, const double *start, int64_t n_area, const double *area_lo, const double *area_hi,
                double *dt_match, uint8_t *dt_ignore, double *gt_match, int64_t *gt_ignore, int64_t *gt_order) {
    for (int64_t p = 0; p < n_problems; ++p) {
        const int64_t D = n_dt[p], G = n_gt[p], S = iou_stride[p];
        const double *pair = iou + iou_at[p];
        const int64_t *did = dt_id + dt_at[p], *gid = gt_id + gt_at[p];
        const double *darea = dt_area + dt_at[p], *garea = gt_area + gt_at[p];
        const uint8_t *crowd = gt_crowd + gt_at[p];
        for (int64_t a = 0; a < n_area; ++a) {
            const double lo = area_lo[a], hi = area_hi[a];
            int64_t *order = gt_order + out_g_at[p] + a * G, *ig = gt_ignore + out_g_at[p] + a * G;
            double *dm = dt_match + out_dt_at[p] + a * n_thr * D, *gm = gt_match + out_gt_at[p] + a * n_thr * G;
            uint8_t *di = dt_ignore + out_dt_at[p] + a * n_thr * D;
            int64_t ranked = 0;
            for (int64_t flag = 0; flag < 2; ++flag)        /* kept ones first, then the ignored: stable */
                for (int64_t g = 0; g < G; ++g) {
                    const int64_t ignored = crowd[g] || garea[g] < lo || garea[g] > hi;
                    if (ignored == flag) { order[ranked] = g; ig[ranked] = ignored; ++ranked; }
                }
            memset(dm, 0, sizeof(double) * n_thr * D);
            memset(gm, 0, sizeof(double) * n_thr * G);
            memset(di, 0, n_thr * D);
            for (int64_t t = 0; t < n_thr; ++t)
                for (int64_t d = 0; d < D; ++d) {
                    double best = start[t];
                    int64_t m = -1;
                    for (int64_t j = 0; j < G; ++j) {
                        const int64_t g = order[j];
                        if (gm[t * G + j] > 0 && !crowd[g]) continue;   /* taken, and not a crowd */
                        if (m > -1 && ig[m] == 0 && ig[j] == 1) break;  /* holds a kept one: no ignored */
                        const double v = pair[g * S + d];
                        if (v < best) continue;                         /* NaN passes, as in Python */
                        best = v;
                        m = j;
                    }
                    if (m == -1) continue;
                    di[t * D + d] = ig[m] != 0;
                    dm[t * D + d] = (double)gid[order[m]];
                    gm[t * G + m] = (double)did[d];
                }
            for (int64_t t = 0; t < n_thr; ++t)
                for (int64_t d = 0; d < D; ++d)
                    if (dm[t * D + d] == 0 && (darea[d] < lo || darea[d] > hi)) di[t * D + d] = 1;
        }
    }
}
"""

def _declare(library: ctypes.CDLL) -> None:
    library.coco_match.restype = None
    library.coco_match.argtypes = [ctypes.c_int64] + [ctypes.c_void_p] * 15 + [
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 7


KERNEL = CompiledKernel("coco_match", _SOURCE, "the COCO matching kernel", "the slower Python matcher", _declare)
available, disabled = KERNEL.available, KERNEL.disabled


def _match_python(n_dt, n_gt, iou_at, iou_stride, dt_at, gt_at, out_dt_at, out_gt_at, out_g_at, iou, dt_id,
                  dt_area, gt_id, gt_area, gt_crowd, start, area_lo, area_hi, dt_match, dt_ignore, gt_match,
                  gt_ignore, gt_order) -> None:
    """The C kernel's loop (its comment says what each array holds), in Python."""
    T = len(start)
    for p in range(len(n_dt)):
        D, G, S = int(n_dt[p]), int(n_gt[p]), int(iou_stride[p])
        pair, did, gid = iou[iou_at[p]:], dt_id[dt_at[p]:], gt_id[gt_at[p]:]
        darea, garea, crowd = dt_area[dt_at[p]:], gt_area[gt_at[p]:], gt_crowd[gt_at[p]:]
        for a, (lo, hi) in enumerate(zip(area_lo, area_hi)):
            ignored = [int(crowd[g] != 0 or garea[g] < lo or garea[g] > hi) for g in range(G)]
            order = [g for flag in (0, 1) for g in range(G) if ignored[g] == flag]
            ig = [ignored[g] for g in order]
            at_g = out_g_at[p] + a * G
            gt_order[at_g:at_g + G], gt_ignore[at_g:at_g + G] = order, ig
            dm = dt_match[out_dt_at[p] + a * T * D:][:T * D].reshape(T, D)
            di = dt_ignore[out_dt_at[p] + a * T * D:][:T * D].reshape(T, D)
            gm = gt_match[out_gt_at[p] + a * T * G:][:T * G].reshape(T, G)
            dm[:], di[:], gm[:] = 0, 0, 0
            for t in range(T):
                for d in range(D):
                    best, m = start[t], -1
                    for j, g in enumerate(order):
                        if gm[t, j] > 0 and not crowd[g]:
                            continue
                        if m > -1 and ig[m] == 0 and ig[j] == 1:
                            break
                        v = pair[g * S + d]
                        if v < best:
                            continue
                        best, m = v, j
                    if m != -1:
                        di[t, d] = ig[m] != 0
                        dm[t, d] = gid[order[m]]
                        gm[t, m] = did[d]
            outside = (darea[:D] < lo) | (darea[:D] > hi)
            di[(dm == 0) & outside[None, :]] = 1


@dataclass
class GroundTruth:
    """One image's ground truths of the evaluated categories, grouped by category (annotation order within)."""

    cats: np.ndarray     # [G] int64, ascending
    boxes: np.ndarray    # [G, 4] float64 x, y, w, h
    area: np.ndarray     # [G] float64
    crowd: np.ndarray    # [G] uint8
    ids: np.ndarray      # [G] int64


def ground_truths(annotations: list[dict], image_ids, cat_ids) -> dict[int, GroundTruth]:
    """Per image id, its annotations (COCO dicts, in file order) of the categories ``cat_ids``, as pycocotools'
    index of them orders them (by image, in file order)."""
    wanted = set(int(c) for c in cat_ids)
    rows: dict[int, list] = {int(i): [] for i in image_ids}
    for ann in annotations:
        if ann["image_id"] in rows and ann["category_id"] in wanted:
            rows[ann["image_id"]].append(ann)
    out = {}
    for image_id, anns in rows.items():
        cats = np.array([a["category_id"] for a in anns], dtype=np.int64)
        order = np.argsort(cats, kind="stable")
        pick = [anns[i] for i in order]
        out[image_id] = GroundTruth(cats[order], np.array([a["bbox"] for a in pick], dtype=np.float64).reshape(-1, 4),
                                    np.array([a["area"] for a in pick], dtype=np.float64),
                                    np.array([1 if a["iscrowd"] else 0 for a in pick], dtype=np.uint8),
                                    np.array([a["id"] for a in pick], dtype=np.int64))
    return out


def _runs(keys: np.ndarray) -> dict[int, tuple[int, int]]:
    """Key -> [start, stop) of each run of equal keys in a sorted array."""
    values, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    return {int(v): (int(s), int(s + c)) for v, s, c in zip(values, starts, counts)}


def evaluate_images(image_ids, cat_ids, gts: dict[int, GroundTruth], dets: np.ndarray, first_id: int,
                    params) -> np.ndarray:
    """``COCOeval.evaluate``'s ``evalImgs`` for these images, as an object array [category, area range, image]
    (``cat_ids`` and ``image_ids`` ascending, numpy int64: pycocotools' ``np.unique`` of them).

    ``dets``: [N, 7] float64 rows (image id, COCO category id, x, y, w, h, score) in result order, numbered
    ``first_id``, ``first_id + 1``, ... as one ``loadRes`` of the batches so far numbers them; ``params``:
    pycocotools' ``Params("bbox")`` (its IoU thresholds, area ranges and the last of its sorted maxDets)."""
    from pycocotools import mask as mask_utils

    T, A = len(params.iouThrs), len(params.areaRng)
    max_det = sorted(params.maxDets)[-1]
    image_pos = {int(i): n for n, i in enumerate(image_ids)}
    cat_pos = {int(c): n for n, c in enumerate(cat_ids)}
    table = np.full((len(cat_ids), A, len(image_ids)), None, dtype=object)

    ids = first_id + np.arange(len(dets), dtype=np.int64)
    known = np.isin(dets[:, 1], cat_ids)  # pycocotools evaluates only the ground truth's categories
    dets, ids = dets[known], ids[known]
    img = np.array([image_pos[int(i)] for i in dets[:, 0]], dtype=np.int64)
    cat, score = dets[:, 1].astype(np.int64), dets[:, 6]
    # rank: image, category, score highest first, result order among equal scores; then keep max_det per pair
    rank = np.lexsort((ids, -score, cat, img))
    img, cat, ids, boxes, score = img[rank], cat[rank], ids[rank], dets[rank, 2:6], score[rank]
    pair = img * len(cat_ids) + np.searchsorted(cat_ids, cat)
    first = np.r_[0, np.flatnonzero(np.diff(pair)) + 1]
    nth = np.arange(len(pair)) - np.repeat(first, np.diff(np.r_[first, len(pair)]))
    keep = nth < max_det
    img, cat, ids, boxes, score = img[keep], cat[keep], ids[keep], boxes[keep], score[keep]
    area = boxes[:, 2] * boxes[:, 3]  # loadRes' area of a bbox result

    problems, ious, iou_size = [], [], 0  # problem: (category, image positions, dt range, gt offset, G, iou at)
    dt_image = _runs(img)
    gt_at, gt_parts = 0, []
    for i, image_id in enumerate(image_ids):
        gt = gts[int(image_id)]
        d0, d1 = dt_image.get(i, (0, 0))
        iou = None
        if d1 > d0 and len(gt.ids):
            iou = np.ascontiguousarray(mask_utils.iou(boxes[d0:d1], gt.boxes, gt.crowd).T)  # [G, D] gt-major
            ious.append(iou.reshape(-1))
        dt_cat, gt_cat = _runs(cat[d0:d1]), _runs(gt.cats)
        for c in sorted(dt_cat.keys() | gt_cat.keys()):
            r0, r1 = dt_cat.get(c, (0, 0))
            c0, c1 = gt_cat.get(c, (0, 0))
            at = iou_size + c0 * (d1 - d0) + r0 if iou is not None else 0
            problems.append((cat_pos[c], i, d0 + r0, r1 - r0, gt_at + c0, c1 - c0, at, d1 - d0))
        if iou is not None:
            iou_size += iou.size
        gt_at += len(gt.ids)
        gt_parts.append(gt)
    if not problems:
        return table

    k_of, i_of, dt_at, n_dt, gt_of, n_gt, iou_at, stride = (np.array(col, dtype=np.int64) for col in zip(*problems))
    out_dt_at = np.r_[0, np.cumsum(A * T * n_dt)[:-1]]
    out_gt_at = np.r_[0, np.cumsum(A * T * n_gt)[:-1]]
    out_g_at = np.r_[0, np.cumsum(A * n_gt)[:-1]]
    iou_all = np.concatenate(ious) if ious else np.zeros(1)
    gt_ids = np.concatenate([g.ids for g in gt_parts])
    gt_area = np.concatenate([g.area for g in gt_parts])
    gt_crowd = np.concatenate([g.crowd for g in gt_parts])
    start = np.array([min(t, 1 - 1e-10) for t in params.iouThrs], dtype=np.float64)
    area_lo = np.array([r[0] for r in params.areaRng], dtype=np.float64)
    area_hi = np.array([r[1] for r in params.areaRng], dtype=np.float64)
    total_dt, total_gt = int(A * T * n_dt.sum()), int(A * T * n_gt.sum())
    dt_match, dt_ignore = np.empty(total_dt), np.empty(total_dt, dtype=np.uint8)  # the matcher sets every value
    gt_match = np.empty(total_gt)
    gt_ignore, gt_order = np.empty(int(A * n_gt.sum()), dtype=np.int64), np.empty(int(A * n_gt.sum()), dtype=np.int64)
    arrays = (n_dt, n_gt, iou_at, stride, dt_at, gt_of, out_dt_at, out_gt_at, out_g_at, iou_all, ids, area,
              gt_ids, gt_area, gt_crowd)
    library = KERNEL.library()
    if library is not None:
        ptr = [a.ctypes.data for a in arrays]
        library.coco_match(len(problems), *ptr, T, start.ctypes.data, A, area_lo.ctypes.data, area_hi.ctypes.data,
                           dt_match.ctypes.data, dt_ignore.ctypes.data, gt_match.ctypes.data, gt_ignore.ctypes.data,
                           gt_order.ctypes.data)
    else:
        _match_python(*arrays, start, area_lo, area_hi, dt_match, dt_ignore, gt_match, gt_ignore, gt_order)

    dt_ignore = dt_ignore.view(np.bool_)
    for p in range(len(problems)):
        k, i, D, G = int(k_of[p]), int(i_of[p]), int(n_dt[p]), int(n_gt[p])
        d0, g0 = int(dt_at[p]), int(gt_of[p])
        dm = dt_match[out_dt_at[p]:out_dt_at[p] + A * T * D].reshape(A, T, D)
        di = dt_ignore[out_dt_at[p]:out_dt_at[p] + A * T * D].reshape(A, T, D)
        gm = gt_match[out_gt_at[p]:out_gt_at[p] + A * T * G].reshape(A, T, G)
        gi = gt_ignore[out_g_at[p]:out_g_at[p] + A * G].reshape(A, G)
        go = gt_order[out_g_at[p]:out_g_at[p] + A * G].reshape(A, G)
        these_ids, these_scores = ids[d0:d0 + D], score[d0:d0 + D]
        for a in range(A):
            table[k, a, i] = {
                "image_id": image_ids[i], "category_id": cat_ids[k], "aRng": params.areaRng[a], "maxDet": max_det,
                "dtIds": these_ids.tolist(), "gtIds": gt_ids[g0 + go[a]].tolist(), "dtMatches": dm[a],
                "gtMatches": gm[a], "dtScores": these_scores.tolist(),
                "gtIgnore": gi[a] if G else np.array([]),  # pycocotools' np.array of no flags: float64
                "dtIgnore": di[a]}
    return table
