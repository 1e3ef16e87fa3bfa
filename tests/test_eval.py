"""COCO evaluation pieces (NMS, matching, P/R, letterbox) and the yolov5n acceptance figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sw.cli import main
from sw.eval.boxes import box_iou, unletterbox
from sw.eval.coco import detect, detect_many, load_coco, score
from sw.eval.images import SCALE, Placement, letterbox_shape, load_letterboxed, prefetch_batches, shape_batches
from sw.eval.metrics import match_predictions, precision_recall_at_max_f1
from sw.eval import nms
from sw.eval.nms import greedy_nms, non_max_suppression


def _reference_nms(boxes, scores, classes, thr):
    """Textbook per-class greedy NMS, merged by score (ties: the earlier candidate first)."""
    keep = []
    for c in np.unique(classes):
        idx = list(np.flatnonzero(classes == c)[np.argsort(-scores[classes == c], kind="stable")])
        while idx:
            i = idx.pop(0)
            keep.append(i)
            ious = box_iou(torch.tensor(boxes[[i]]), torch.tensor(boxes[idx])).numpy()[0] if idx else []
            idx = [j for j, v in zip(idx, ious) if v <= thr]
    return sorted(keep, key=lambda i: (-scores[i], i))


@pytest.mark.parametrize("seed,n", [(0, 400), (1, 400), (2, 400), (3, 1300), (4, 1300)])
def test_greedy_nms_matches_reference(seed, n):
    """Several blocks of candidates (sw.eval.nms.BLOCK) and a cut inside one."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 4, n).astype(np.float32)
    got = greedy_nms(boxes, scores, classes, 0.5, max_det=10_000).tolist()
    assert got == _reference_nms(boxes, scores, classes, 0.5)
    assert greedy_nms(boxes, scores, classes, 0.5, max_det=7).tolist() == got[:7]


def test_nms_multilabel_and_threshold():
    # one anchor, two classes above threshold -> two candidates with scores obj*cls
    pred = torch.zeros(1, 2, 8)
    pred[0, 0, :4] = torch.tensor([50, 50, 20, 20])
    pred[0, 0, 4:] = torch.tensor([0.5, 0.8, 0.4, 0.001])
    pred[0, 1, 4] = 0.0005  # below conf: dropped
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.65)[0]
    assert out[:, 5].tolist() == [0.0, 1.0]
    assert out[:, 4].tolist() == pytest.approx([0.4, 0.2])
    assert out[0, :4].tolist() == [40, 40, 60, 60]


def test_nms_on_real_predictions_matches_the_textbook(yolov5n, coco_root):
    """The real YOLOv5n's predictions (thousands of candidates per image at conf 0.001, many blocks): the same
    boxes, scores and classes, bit for bit, as a plain torch candidate filter and textbook per-class NMS."""
    coco = load_coco(coco_root, limit=3)
    images = [load_letterboxed(coco.paths[i], i, 320, 32) for i in coco.image_ids]
    with torch.inference_mode():
        preds = [yolov5n(torch.from_numpy(im.array)[None].float() / 255.0) for im in images]
    for pred in preds:
        x, got = pred[0], non_max_suppression(pred, conf_thres=0.001, iou_thres=0.65, max_det=300)[0]
        x = x[x[:, 4] > 0.001]
        cls_scores = x[:, 5:] * x[:, 4:5]
        i, j = (cls_scores > 0.001).nonzero(as_tuple=True)
        xy, wh = x[i, :2], x[i, 2:4]
        cand = torch.cat((xy - wh / 2, xy + wh / 2, cls_scores[i, j, None], j[:, None].float()), 1).numpy()
        keep = _reference_nms(cand[:, :4], cand[:, 4], cand[:, 5], 0.65)[:300]
        assert len(cand) > 300 and len(keep) > 10  # real work: many candidates, many kept
        assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(cand[keep]))


def _same_bits(got, ref):
    """Both paths' (detections, dropped) equal bit for bit (a -0.0 is not a 0.0)."""
    (dets, dropped), (ref_dets, ref_dropped) = got, ref
    assert dropped == ref_dropped and len(dets) == len(ref_dets)
    for a, b in zip(dets, ref_dets):
        assert a.dtype == b.dtype and a.shape == b.shape
        bits = torch.int32 if a.dtype == torch.float32 else torch.int64
        assert torch.equal(a.view(bits), b.view(bits))


def _hostile_predictions(seed: int, dtype) -> np.ndarray:
    """[3, 600, 5 + 4] predictions made to hit every branch: tied scores, heavy overlap among few classes,
    rows holding NaN or infinity, zero-size boxes and boxes so large their corners overflow to infinity."""
    rng = np.random.default_rng(seed)
    x = np.empty((3, 600, 9))
    x[..., :2] = rng.uniform(0, 100, (3, 600, 2))
    x[..., 2:4] = rng.uniform(0, 40, (3, 600, 2))
    x[..., 4:] = rng.integers(0, 9, (3, 600, 5)) / 8  # few distinct scores: many ties
    x[0, :20, 2:4] = 0                                 # zero-size boxes: IoU 0/0, NaN
    x[1, :10, :4] = np.finfo(dtype).max                # corners overflow to infinity: IoU inf / inf, NaN
    x[1, 10:15, 2] = -np.finfo(dtype).max              # negative widths
    for k, v in enumerate((np.nan, np.inf, -np.inf)):
        x[2, 30 + k::50, rng.integers(0, 9)] = v
    return x.astype(dtype)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # numpy's, at the 1e40 threshold
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("conf,iou,max_det,max_nms", [(0.001, 0.65, 300, 30000), (0.2, 0.3, 7, 30000),
                                                      (-1.0, 0.5, 50, 30000), (0.0, 0.0, 1000, 40),
                                                      (0.3, 1.0, 1, 30000), (1e40, 0.65, 300, 30000),
                                                      (0.001, -0.5, 300, 30000)])
def test_nms_kernel_equals_the_numpy_path(nms_built, monkeypatch, dtype, seed, conf, iou, max_det, max_nms):
    """The compiled NMS against the numpy path, bit for bit, with the non-finite rows' count: ties in score
    order, thresholds 0 and 1, negative ones (rows read as zeros become candidates; every IoU but NaN suppresses),
    one beyond float32's range, the max_det cut, the MAX_NMS cut."""
    monkeypatch.setattr(nms, "MAX_NMS", max_nms)
    pred = _hostile_predictions(seed, dtype)
    got = nms.suppress(pred, conf, iou, max_det)
    with nms.disabled():
        ref = nms.suppress(pred, conf, iou, max_det)
    _same_bits(got, ref)
    assert got[1] == int((~np.isfinite(pred).all(-1)).sum()) > 0


def test_nms_kernel_equals_the_numpy_path_on_real_predictions(nms_built, yolov5n, coco_root):
    """The real YOLOv5n's predictions (thousands of candidates per image), as float32 (the float passes) and
    float64 (the HW and INT passes)."""
    coco = load_coco(coco_root, limit=4)
    images = [load_letterboxed(coco.paths[i], i, 320, 32) for i in coco.image_ids]
    with torch.inference_mode():
        preds = [yolov5n(torch.from_numpy(im.array)[None].float() / 255.0).numpy() for im in images]
    for x in preds + [pred.astype(np.float64) for pred in preds]:
        got = nms.suppress(x)
        with nms.disabled():
            ref = nms.suppress(x)
        _same_bits(got, ref)
        assert len(got[0][0]) > 10


def test_match_predictions_yolov7_rules():
    gt = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=torch.float64)
    gt_cls = torch.tensor([0.0, 0.0])
    pred = torch.tensor([[0, 0, 10, 10, 0.9, 0],      # TP on gt 0
                         [0, 0, 10, 9, 0.8, 0],       # best gt is 0, already taken -> FP
                         [20, 20, 30, 30, 0.7, 1],    # right box, wrong class -> FP
                         [21, 21, 30, 30, 0.6, 0]], dtype=torch.float64)  # TP on gt 1 (IoU .81)
    assert match_predictions(pred, gt, gt_cls).tolist() == [True, False, False, True]


def test_precision_recall_at_max_f1_hand_example():
    # class 0: 2 targets; predictions conf .9 TP, .8 FP, .7 TP. Best F1 at conf .7: P=2/3, R=1
    tp = np.array([1, 0, 1], dtype=float)
    conf = np.array([0.9, 0.8, 0.7])
    p, r = precision_recall_at_max_f1(tp, conf, np.zeros(3), np.zeros(2))
    assert p == pytest.approx(2 / 3, abs=1e-3) and r == pytest.approx(1.0, abs=1e-3)


def test_letterbox_minimal_padding_and_inverse(coco_root):
    assert letterbox_shape((480, 640), 640, 32) == ((480, 640), (480, 640))
    assert letterbox_shape((427, 640), 640, 32) == ((427, 640), (448, 640))
    assert letterbox_shape((375, 500), 640, 32) == ((480, 640), (480, 640))
    coco = load_coco(coco_root, limit=3)
    i = coco.image_ids[0]
    lb = load_letterboxed(coco.paths[i], i, 640, 32)
    assert lb.array.shape[1] % 32 == 0 and lb.array.shape[2] % 32 == 0
    h0, w0 = lb.orig_hw
    box = torch.tensor([[0.0, 0.0, w0, h0]], dtype=torch.float64)
    fwd = box * lb.gain + torch.tensor([lb.pad[0], lb.pad[1]] * 2)
    torch.testing.assert_close(unletterbox(fwd, lb.gain, lb.pad, lb.orig_hw), box)
    batches = shape_batches([(k, coco.sizes[k]) for k in coco.image_ids], 640, 32, 2)
    assert sorted(sum(batches, [])) == coco.image_ids


def test_normalized_batches_equal_the_uint8_path(coco_root, tmp_path):
    """The float batches the decoding threads write (the network's input) are the uint8 batches' .float() / 255.0
    bit for bit, with the same placements, also where an unreadable image leaves its batch; the float32
    division is torch's for all 256 values."""
    values = np.arange(256, dtype=np.uint8)
    assert np.array_equal(np.divide(values, SCALE).view(np.int32),
                          (torch.from_numpy(values).float() / 255.0).numpy().view(np.int32))
    coco = load_coco(coco_root, limit=14)
    paths = dict(coco.paths)
    broken = coco.image_ids[5]
    paths[broken] = tmp_path / "broken.jpg"
    paths[broken].write_bytes(b"\xff\xd8 not a jpeg")
    batches = shape_batches([(i, coco.sizes[i]) for i in coco.image_ids], 640, 32, 4)
    assert any(len(b) > 1 for b in batches) and len({letterbox_shape(s, 640, 32)[1] for s in coco.sizes.values()}) > 1
    runs = []
    for normalized in (False, True):
        skipped = {}
        runs.append((list(prefetch_batches(batches, paths, 640, 32, sizes=coco.sizes, skipped=skipped,
                                           normalized=normalized)), skipped))
    (plain, skipped_plain), (normed, skipped_normed) = runs
    assert list(skipped_normed) == list(skipped_plain) == [broken] and len(plain) == len(normed)
    for (u8, items), (x, places) in zip(plain, normed):
        assert x.dtype == torch.float32 and torch.equal(x.view(torch.int32), (u8.float() / 255.0).view(torch.int32))
        assert places == [Placement(it.image_id, it.orig_hw, it.gain, it.pad) for it in items]
    with pytest.raises(ValueError, match="sizes"):
        next(prefetch_batches(batches, paths, 640, 32, normalized=True))


def test_missing_coco_is_named(tmp_path, capsys):
    assert main(["eval", "--weights", str(tmp_path / "none.pt"), "--coco", str(tmp_path)]) == 2
    assert "none.pt: checkpoint file not found" in capsys.readouterr().err


def test_pipelined_eval_equals_the_sequential_path(yolov5n, coco_root):
    """Decoding and NMS overlapped with the forward pass, and several models in one pass over the images,
    change nothing: the same detections in the same order, the same mAP. Batches of 2 over 5 images, so
    several batches are in flight at once."""
    coco = load_coco(coco_root, limit=5)
    kwargs = dict(stride=int(yolov5n.stride.max()), img_size=320, batch_size=2, progress=False)
    flipped = lambda x: yolov5n(x.flip(-1))  # noqa: E731 - a second model with other detections
    sequential = {tag: detect(m, coco, pipeline=False, **kwargs) for tag, m in (("a", yolov5n), ("b", flipped))}
    together, _ = detect_many({"a": yolov5n, "b": flipped}, coco, **kwargs)
    for tag in ("a", "b"):
        assert list(together[tag]) == list(sequential[tag])
        assert all(torch.equal(together[tag][i], sequential[tag][i]) for i in sequential[tag])
        assert score(coco, together[tag]) == score(coco, sequential[tag])
    assert score(coco, sequential["a"])["map50"] > 0  # real detections were compared
    assert not all(torch.equal(sequential["a"][i], sequential["b"][i]) for i in sequential["a"])


@pytest.mark.slow
def test_yolov5n_coco_subset_acceptance(yolov5n_path, coco_root, tmp_path, capsys):
    """Issue acceptance: map50_95 0.307 +- 0.005 and map50 0.477 +- 0.005 on the 206-image subset."""
    out = tmp_path / "r.json"
    assert main(["eval", "--weights", str(yolov5n_path), "--coco", str(coco_root), "--json", str(out),
                 "--quiet"]) == 0
    r = json.loads(out.read_text())
    assert set(r) >= {"precision", "recall", "map50", "map50_95", "images", "seconds"}
    assert r["images"] == 206
    assert abs(r["map50_95"] - 0.307) <= 0.005, r
    assert abs(r["map50"] - 0.477) <= 0.005, r
    assert 0.4 < r["precision"] < 0.8 and 0.3 < r["recall"] < 0.6, r
