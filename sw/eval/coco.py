"""COCO evaluation of a detector: YOLOv7 test.py conventions, mAP from pycocotools (its ``summarize``; its
per-image evaluation and ``accumulate`` computed, equal, by :mod:`sw.eval.coco_match` and
:mod:`sw.eval.coco_accumulate`).

:func:`evaluate` takes any callable mapping a float NCHW batch in [0, 1] to decoded predictions
``[n, anchors, 5 + nc]``, so float, fake-quantized and hardware-exact models are measured by the same ruler.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import limits
from ..errors import DataNotFoundError
from .boxes import unletterbox
from .coco_classes import COCO80_TO_91, COCO91_TO_80
from .coco_accumulate import accumulate
from .coco_match import evaluate_images, ground_truths
from .images import prefetch_batches, shape_batches
from .metrics import match_predictions, precision_recall_at_max_f1
from .nms import suppress

ANNOTATIONS = "annotations/instances_val2017.json"
IMAGES = "images/val2017"
# An evaluation fails when more than this fraction of its images had to be skipped (unreadable, too large,
# or inconsistent with their annotation): a few bad files are reported, a broken dataset is an error.
MAX_SKIPPED_FRACTION = 0.05
_MAX_WARNINGS = 10  # per kind; then a count


def warn(message: str) -> None:
    tqdm.write(f"yoloq: warning: {message}", file=sys.stderr)


@dataclass
class CocoSubset:
    """A COCO root in the standard layout, restricted to images that are present."""

    root: Path
    annotation_file: Path
    paths: dict[int, Path]
    sizes: dict[int, tuple[int, int]]                          # image id -> (h, w)
    targets: dict[int, tuple[torch.Tensor, torch.Tensor]]      # image id -> (xyxy boxes, class 0..79), no crowd
    gt: dict = field(default_factory=dict)                      # the cleaned instances file pycocotools scores
    skipped: dict[int | str, str] = field(default_factory=dict)  # image id -> why it was left out

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.paths)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_image(im) -> str | None:
    """Why an ``images`` entry cannot be used, or None."""
    if not isinstance(im, dict) or not _int(im.get("id")):
        return "entry without an integer id"
    name = im.get("file_name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        return "file_name is not a plain file name"
    h, w = im.get("height"), im.get("width")
    if not (_int(h) and _int(w) and h > 0 and w > 0 and h * w <= limits.MAX_IMAGE_PIXELS):
        return f"height/width not positive integers within {limits.MAX_IMAGE_PIXELS} pixels"
    return None


def _box(a) -> tuple[float, float, float, float] | None:
    bbox = a.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(
            limits.is_finite_number(v) for v in bbox):
        return tuple(float(v) for v in bbox)
    return None


def load_coco(root: str | Path, limit: int | None = None) -> CocoSubset:
    """Read ``annotations/instances_val2017.json`` and ``images/val2017/`` under ``root``.

    Image entries or annotations that are malformed (no integer id, no usable bbox, a non-positive size) are
    left out with a warning and counted in ``skipped``; the annotation file as a whole must be COCO-shaped."""
    root = Path(root)
    ann_file, img_dir = root / ANNOTATIONS, root / IMAGES
    for p, what in ((ann_file, "COCO annotation file"), (img_dir, "COCO image folder")):
        if not p.exists():
            raise DataNotFoundError(f"{what} missing: {p} (expected the standard COCO layout under {root})")
    if not ann_file.is_file():
        raise DataNotFoundError(f"{ann_file}: COCO annotation file is not a regular file")
    if ann_file.stat().st_size > limits.MAX_ANNOTATION_BYTES:
        raise DataNotFoundError(f"{ann_file}: larger than the {limits.MAX_ANNOTATION_BYTES // limits.MiB} MiB "
                                "accepted for a COCO annotation file")
    try:
        data = json.loads(ann_file.read_bytes())
        raw_images, annotations = data["images"], data["annotations"]
        if not isinstance(raw_images, list) or not isinstance(annotations, list):
            raise TypeError("images and annotations must be lists")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, KeyError, TypeError) as e:
        raise DataNotFoundError(f"{ann_file}: not a COCO instances file ({type(e).__name__}: {str(e)[:80]})") from None
    skipped: dict = {}
    images = {}
    for n, im in enumerate(raw_images):
        reason = _check_image(im)
        if reason is None and im["id"] in images:
            reason = "duplicate id"
        if reason is not None:
            key = im["id"] if isinstance(im, dict) and _int(im.get("id")) else f"images[{n}]"
            skipped[key] = reason
            if len(skipped) <= _MAX_WARNINGS:
                warn(f"{ann_file}: image {key}: {reason}; skipped")
            continue
        images[im["id"]] = im
    if len(skipped) > _MAX_WARNINGS:
        warn(f"{ann_file}: {len(skipped) - _MAX_WARNINGS} more image entries skipped")
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
    gt_anns, bad_anns = [], 0
    for a in annotations:
        box = _box(a) if isinstance(a, dict) else None
        if box is None or not _int(a.get("image_id")) or not _int(a.get("category_id")):
            bad_anns += 1
            continue
        if a["image_id"] not in boxes:
            continue
        iscrowd = 1 if a.get("iscrowd") else 0
        area = a.get("area")
        area = float(area) if limits.is_finite_number(area) else box[2] * box[3]
        gt_anns.append({"id": len(gt_anns) + 1, "image_id": a["image_id"], "category_id": a["category_id"],
                        "bbox": list(box), "area": area, "iscrowd": iscrowd})
        x, y, w, h = box
        if not iscrowd and a["category_id"] in COCO91_TO_80 and w > 0 and h > 0:
            boxes[a["image_id"]].append((x, y, x + w, y + h, COCO91_TO_80[a["category_id"]]))
    if bad_anns:
        warn(f"{ann_file}: {bad_anns} annotations without an integer image/category id or a finite "
             "[x, y, w, h] bbox; ignored")
    targets = {}
    for i, rows in boxes.items():
        t = torch.tensor(rows, dtype=torch.float64).view(-1, 5)
        targets[i] = (t[:, :4], t[:, 4])
    gt = {"images": [{"id": i, "height": sizes[i][0], "width": sizes[i][1]} for i in paths],
          "annotations": gt_anns, "categories": [{"id": c} for c in sorted(COCO91_TO_80)]}
    if limit and len(paths) >= limit:
        skipped = {}  # with --limit N reached, the bad entries were not among the images asked for
    return CocoSubset(root, ann_file, paths, sizes, targets, gt, skipped)


def _postprocess(pred: torch.Tensor, items, conf_thres: float, iou_thres: float, max_det: int):
    """NMS of one batch's predictions, boxes mapped back to original-image pixels: ([(image id, [n, 6])],
    number of predictions dropped because they held NaN or infinite values: those are never scored)."""
    out = []
    detections, dropped = suppress(pred, conf_thres, iou_thres, max_det)  # one thread: compiled, or numpy
    with torch.inference_mode():
        for det, it in zip(detections, items):
            det = det.double()
            det[:, :4] = unletterbox(det[:, :4], it.gain, it.pad, it.orig_hw)
            out.append((it.image_id, det))
    return out, dropped


def _postprocess_and_score(pred: torch.Tensor, items, conf_thres: float, iou_thres: float, max_det: int,
                           scorer: "Scorer | None"):
    out, dropped = _postprocess(pred, items, conf_thres, iou_thres, max_det)
    if scorer is not None:
        scorer.add(out)
    return out, dropped


def detect(predict: Callable[[torch.Tensor], torch.Tensor], coco: CocoSubset, **kwargs) -> dict[int, torch.Tensor]:
    """Detections per image id, [n, 6] (x1, y1, x2, y2, score, class) in original-image pixels
    (keyword arguments: :func:`detect_many`'s)."""
    return detect_many({"": predict}, coco, **kwargs)[0][""]


def detect_many(predicts: dict[str, Callable[[torch.Tensor], torch.Tensor]], coco: CocoSubset, *,
                img_size: int = 640, stride: int = 32, conf_thres: float = 0.001, iou_thres: float = 0.65,
                max_det: int = 300, batch_size: int = 8, progress: bool = True, desc: str = "eval",
                pipeline: bool = True, scorers: dict[str, "Scorer"] | None = None,
                ) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, float]]:
    """:func:`detect` for several models in one pass over the images (each batch decoded once, then run
    through every model): per model, its detections (the same as a pass of its own) and its forward seconds.

    With ``pipeline`` (default) the forward passes are the only work on this thread: the next batch is
    decoded and the previous batches' NMS runs in background threads meanwhile (numpy and the image decoder
    release the GIL). The detections are the same tensors as without it, in the same order. ``scorers`` (per
    model, optional): each batch's detections are added to the model's :class:`Scorer` there too, as they come.
    """
    batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], img_size, stride, batch_size)
    results: dict[str, dict[int, torch.Tensor]] = {tag: {} for tag in predicts}
    forward_s = dict.fromkeys(predicts, 0.0)
    bar = tqdm(total=len(coco.paths) * len(predicts), desc=desc, unit="img", disable=not progress, leave=False)

    dropped = dict.fromkeys(predicts, 0)

    def collect(tag, done):
        batch, dropped[tag] = done[0], dropped[tag] + done[1]
        for image_id, det in batch:
            results[tag][image_id] = det
        bar.update(len(batch))

    post = ThreadPoolExecutor(max_workers=1) if pipeline else None
    pending: deque = deque()
    try:
        with torch.inference_mode():
            for x, items in prefetch_batches(batches, coco.paths, img_size, stride, sizes=coco.sizes,
                                             skipped=coco.skipped, normalized=True):
                for tag, predict in predicts.items():
                    t0 = time.perf_counter()
                    pred = predict(x)
                    forward_s[tag] += time.perf_counter() - t0
                    args = (pred, items, conf_thres, iou_thres, max_det, (scorers or {}).get(tag))
                    if post is None:
                        collect(tag, _postprocess_and_score(*args))
                        continue
                    pending.append((tag, post.submit(_postprocess_and_score, *args)))
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
    for tag, n in dropped.items():
        if n:
            warn(f"{desc}{' ' + tag if tag else ''}: {n} predictions with NaN or infinite values were dropped, "
                 "not scored")
    unreadable = [reason for image_id, reason in coco.skipped.items() if image_id in coco.paths]
    for reason in unreadable[:_MAX_WARNINGS]:
        warn(f"{reason}; skipped")
    if len(unreadable) > _MAX_WARNINGS:
        warn(f"{len(unreadable) - _MAX_WARNINGS} more images skipped")
    return results, forward_s


_STDOUT_SWAP = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """pycocotools prints progress we do not want. The swap of ``sys.stdout`` is process-wide and a nested swap
    from another thread would restore the wrong stream, so scoring threads take turns."""
    with _STDOUT_SWAP, contextlib.redirect_stdout(io.StringIO()):
        yield


def python_round(values: np.ndarray, digits: int) -> np.ndarray:
    """Python's ``round(v, digits)`` of each float64 of ``values`` (the decimal rounding of its exact value, half
    to even, then the nearest double), vectorised. ``rint(v * 10**digits) / 10**digits`` is that value (the
    division is correctly rounded) unless ``v * 10**digits``, itself rounded, lies within two of its ulps of a
    half-integer, where the exact product may be on the other side (or beyond 2**52, or not finite): those few
    are rounded by Python."""
    scale = 10.0 ** digits
    with np.errstate(over="ignore", invalid="ignore"):  # huge or non-finite values: Python's below
        scaled = values * scale
        out = np.rint(scaled) / scale
        near = ~(np.abs(scaled) < 2.0 ** 52) | (np.abs(scaled - np.floor(scaled) - 0.5) <= 2 * np.abs(np.spacing(scaled)))
    for i in np.flatnonzero(near):
        out.flat[i] = round(float(values.flat[i]), digits)
    return out


_COCO91 = np.asarray(COCO80_TO_91, dtype=np.float64)


def coco_table(image_id: int, det: torch.Tensor) -> np.ndarray:
    """One image's [n, 6] detections as a float64 table [n, 7] of (image id, COCO category id, x, y, w, h, score):
    pycocotools' bbox results with YOLOv7 test.py's rounding (Python's ``round``: 3 digits, the score 5)."""
    d = det.numpy()
    table = np.empty((len(d), 7), dtype=np.float64)
    table[:, 0] = image_id
    table[:, 1] = _COCO91[d[:, 5].astype(np.int64)]
    table[:, 2:4] = python_round(d[:, 0:2], 3)
    table[:, 4:6] = python_round(d[:, 2:4] - d[:, 0:2], 3)
    table[:, 6] = python_round(d[:, 4], 5)
    return table


def coco_rows(image_id: int, det: torch.Tensor) -> list[list]:
    """:func:`coco_table` as rows of Python numbers (the ids as ints)."""
    return [[image_id, int(c), x, y, w, h, s] for _, c, x, y, w, h, s in coco_table(image_id, det).tolist()]


def coco_records(detections) -> list[dict]:
    """(image id, [n, 6] detections) pairs as pycocotools results (:func:`coco_rows` as dicts)."""
    return [{"image_id": i, "category_id": c, "bbox": [x, y, w, h], "score": s}
            for image_id, det in detections for i, c, x, y, w, h, s in coco_rows(image_id, det)]


class Scorer:
    """P and R (YOLOv7 style, at max mean F1), mAP@.5 and mAP@.5:.95 (pycocotools) of one model's detections,
    fed batch by batch (:meth:`add`), so that the per-image work (P/R matching, COCO's per-image evaluation)
    runs as the batches arrive, beside the next forward passes (:func:`detect_many`).

    Each batch's per-image evaluations are :func:`sw.eval.coco_match.evaluate_images`' (pycocotools'
    ``COCOeval.evaluate``, computed by our own, compiled code), its detections numbered on from the batches
    before (as one ``loadRes`` of all of them numbers them); :meth:`result` merges them in the order
    ``accumulate`` expects (category, area range, image id), accumulates them once
    (:func:`sw.eval.coco_accumulate.accumulate`, pycocotools' arrays) and runs pycocotools' ``summarize``: the
    same evaluations, arrays and stats as one pycocotools COCOeval over all the images (tested with ==)."""

    def __init__(self, coco: CocoSubset):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import Params

        self.coco = coco
        self.pr: list[tuple] = []   # per image: (TP flags, scores, classes, target classes)
        self.evals: list = []       # per batch: (its image ids, sorted; its evalImgs [category, area, image])
        self.records = 0
        with _quiet():
            self.gt = COCO()
            self.gt.dataset = coco.gt  # the cleaned annotations (load_coco), not the file as it stands
            self.gt.createIndex()
        self.params = Params(iouType="bbox")
        self.params.catIds = list(np.unique(sorted(self.gt.getCatIds())))  # as COCOeval.evaluate sets them
        self.gts = ground_truths(coco.gt["annotations"], coco.paths, self.params.catIds)

    def add(self, batch: list[tuple[int, torch.Tensor]]) -> None:
        """One batch's (image id, [n, 6] detections) pairs, each image once over all batches."""
        tables = []
        for image_id, det in batch:
            gt_boxes, gt_cls = self.coco.targets[image_id]
            self.pr.append((match_predictions(det, gt_boxes, gt_cls), det[:, 4].numpy(), det[:, 5].numpy(),
                            gt_cls.numpy()))
            tables.append(coco_table(image_id, det))
        ids = np.unique([image_id for image_id, _ in batch])
        dets = np.concatenate(tables) if tables else np.empty((0, 7))
        table = evaluate_images(ids, np.array(self.params.catIds), self.gts, dets, self.records + 1, self.params)
        self.records += len(dets)
        self.evals.append((ids, table))

    def result(self) -> dict:
        if not self.pr:
            raise ValueError("no detections were added")
        p, r = precision_recall_at_max_f1(*(np.concatenate(x) for x in zip(*self.pr)))
        map50 = map50_95 = 0.0
        if self.records:
            ev = self.accumulated()
            map50, map50_95 = float(ev.stats[1]), float(ev.stats[0])
        return {"precision": p, "recall": r, "map50": map50, "map50_95": map50_95}

    def accumulated(self):
        """:meth:`merged`, accumulated (:func:`sw.eval.coco_accumulate.accumulate`: the arrays of pycocotools'
        ``accumulate``, faster) and summarized (pycocotools' ``summarize``)."""
        ev = self.merged()
        accumulate(ev)
        with _quiet():
            ev.summarize()
        return ev

    def merged(self):
        """A pycocotools ``COCOeval`` holding every batch's per-image evaluations, ready to accumulate (with the
        parameters its ``evaluate`` would have left)."""
        from pycocotools.cocoeval import COCOeval

        ids = np.concatenate([batch_ids for batch_ids, _ in self.evals])
        per_image = np.concatenate([table for _, table in self.evals], axis=2)
        order = np.argsort(ids, kind="stable")
        ev = COCOeval(self.gt, None, "bbox")
        ev.params = copy.deepcopy(self.params)
        ev.params.imgIds = list(np.unique(ids))
        ev.params.maxDets = sorted(ev.params.maxDets)
        ev._paramsEval = copy.deepcopy(ev.params)
        ev.evalImgs = per_image[:, :, order].reshape(-1).tolist()
        return ev


def score(coco: CocoSubset, detections: dict[int, torch.Tensor]) -> dict:
    """P and R (YOLOv7 style, at max mean F1), mAP@.5 and mAP@.5:.95 (pycocotools)."""
    scorer = Scorer(coco)
    scorer.add(list(detections.items()))
    return scorer.result()


def evaluate(predict, coco: CocoSubset, **kwargs) -> dict:
    """Detect and score; adds ``images`` and ``seconds`` (wall time of both)."""
    t0 = time.perf_counter()
    scorer = Scorer(coco)
    detections = detect_many({"": predict}, coco, scorers={"": scorer}, **kwargs)[0][""]
    skipped = len(coco.skipped)
    total = len(detections) + skipped
    if not detections or skipped > MAX_SKIPPED_FRACTION * total:
        raise DataNotFoundError(f"{coco.root}: {skipped} of {total} images skipped (unreadable or inconsistent; "
                                f"at most {MAX_SKIPPED_FRACTION:.0%} may be); see the warnings above")
    result = scorer.result()
    result.update(images=len(detections), skipped=skipped, seconds=round(time.perf_counter() - t0, 2))
    return result


def evaluate_many(predicts: dict[str, Callable], coco: CocoSubset, **kwargs) -> dict[str, dict]:
    """:func:`evaluate` of several models in one pass over the images (:func:`detect_many`); the same results
    as separate evaluations. Each result's ``seconds`` is its own forward passes plus its final scoring (the
    shared decoding, the NMS and the per-image scoring overlap them)."""
    scorers = {tag: Scorer(coco) for tag in predicts}
    detections, forward_s = detect_many(predicts, coco, scorers=scorers, **kwargs)
    results = {}
    for tag, dets in detections.items():
        t0 = time.perf_counter()
        result = scorers[tag].result()
        result.update(images=len(dets), seconds=round(forward_s[tag] + time.perf_counter() - t0, 2))
        results[tag] = result
    return results


def format_table(rows: list[tuple[str, dict]]) -> str:
    """A Markdown table of evaluation results, one row per (label, result)."""
    head = "| model | images | P | R | mAP@.5 | mAP@.5:.95 | seconds |\n|---|---:|---:|---:|---:|---:|---:|\n"
    return head + "".join(
        f"| {label} | {r['images']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.3f} | "
        f"{r['map50_95']:.3f} | {r['seconds']:.1f} |\n" for label, r in rows)
