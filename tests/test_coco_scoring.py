"""COCO's per-image evaluation (sw/eval/coco_match.py, compiled and in Python) and accumulation
(sw/eval/coco_accumulate.py) against pycocotools' COCOeval: every per-image evaluation, every accumulated array and
every summary stat equal (==), on real YOLOv5n
detections and on hand-made images that exercise each of COCO's matching rules."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from sw.eval import coco_match
from sw.eval.coco_classes import COCO80_TO_91
from sw.eval.coco import Scorer, coco_records, coco_rows, detect, load_coco, python_round, score


def _pycocotools(coco, dets: dict):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = json.loads(json.dumps(coco.gt))  # pycocotools marks its ground truths: a copy of its own
        gt.createIndex()
        reference = COCOeval(gt, gt.loadRes(coco_records(dets.items())), "bbox")
        reference.params.imgIds = sorted(dets)
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    return reference


def _fed(coco, dets: dict, batch: int) -> Scorer:
    scorer = Scorer(coco)
    items = list(dets.items())
    for start in range(0, len(items), batch):
        scorer.add(items[start:start + batch])
    return scorer


def _ours(coco, dets: dict, batch: int):
    return _fed(coco, dets, batch).accumulated()


def assert_same_evaluation(ours, reference) -> int:
    """Every per-image evaluation field (types, dtypes, shapes, values), the accumulated arrays and the stats
    equal; the number of per-image evaluations that are not None."""
    assert len(ours.evalImgs) == len(reference.evalImgs)
    present = 0
    for a, b in zip(ours.evalImgs, reference.evalImgs):
        assert (a is None) == (b is None)
        if b is None:
            continue
        present += 1
        assert a.keys() == b.keys()
        for key, want in b.items():
            got = a[key]
            assert type(got) is type(want), key
            if isinstance(want, np.ndarray):
                assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), (key, a, b)
            else:
                assert got == want, (key, got, want)
                if isinstance(want, list):
                    assert [type(x) for x in got] == [type(x) for x in want], key
    for key in ("precision", "recall", "scores"):
        assert ours.eval[key].dtype == reference.eval[key].dtype
        assert np.array_equal(ours.eval[key], reference.eval[key]), key
    assert list(ours.stats) == list(reference.stats)
    return present


@pytest.fixture(params=["compiled", "python"])
def matcher(request):
    """Each test twice: with the C kernel (skipped where no compiler exists) and with the Python matcher."""
    if request.param == "python":
        with coco_match.disabled():
            yield request.param
        return
    request.getfixturevalue("coco_match_built")  # tests/conftest.py
    yield request.param


@pytest.fixture(scope="module")
def yolov5n_scored(yolov5n, coco_root):
    """YOLOv5n's detections (conf 0.001, up to 300 per image) of 40 COCO images at 320 px, and pycocotools'
    evaluation of them."""
    coco = load_coco(coco_root, limit=40)
    dets = detect(yolov5n, coco, img_size=320, stride=int(yolov5n.stride.max()), progress=False)
    return coco, dets, _pycocotools(coco, dets)


def test_real_yolov5n_detections(yolov5n_scored, matcher):
    """Real detections scored in batches of 5 and 8 and all at once; the Scorer's mAPs are pycocotools' stats,
    whatever the batches (:func:`~sw.eval.coco.score`: one batch)."""
    coco, dets, reference = yolov5n_scored
    assert reference.stats[1] > 0.2  # real detections were scored
    assert sum(len(d) for d in dets.values()) > 3000
    for batch in (5, 8, len(dets)):
        assert assert_same_evaluation(_ours(coco, dets, batch), reference) > 1000
    result = _fed(coco, dets, 5).result()
    assert (result["map50"], result["map50_95"]) == (reference.stats[1], reference.stats[0])
    assert result == score(coco, dets)


def _dataset(tmp_path, images: dict[int, list[dict]]):
    """A COCO root with empty image files and these annotations (per image id: bbox, category_id, optional
    iscrowd and area)."""
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    anns = []
    for image_id, rows in images.items():
        (tmp_path / "images" / "val2017" / f"{image_id}.jpg").touch()
        for row in rows:
            anns.append({"id": 1000 + len(anns), "image_id": image_id, **row})
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in images],
            "annotations": anns, "categories": [{"id": 1}, {"id": 2}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return load_coco(tmp_path)


def _det(rows) -> torch.Tensor:
    """[n, 6] float64 detections from (x, y, w, h, score, class 0..79) rows."""
    out = torch.tensor(rows, dtype=torch.float64).view(-1, 6)
    out[:, 2:4] += out[:, :2]
    return out


def test_hand_made_rules(tmp_path, matcher):
    """Each rule on its own image: crowds, no ground truth, no detection, more than maxDets detections, equal
    scores, equal IoUs, boxes whose area lies exactly on an area range's border (32^2, 96^2), an ignored ground
    truth of higher IoU than a kept one, a category pycocotools does not evaluate, an annotated area that is not
    w*h."""
    person, bicycle = 0, 1          # classes 0..79; COCO ids 1, 2
    images = {
        1: [{"bbox": [0, 0, 100, 100], "category_id": 1, "iscrowd": 1},  # a crowd takes several detections
            {"bbox": [10, 10, 20, 20], "category_id": 1}],
        2: [],                                                            # detections only
        3: [{"bbox": [5, 5, 50, 50], "category_id": 1}],                  # ground truth only
        4: [{"bbox": [x, 0, 10, 10], "category_id": 2} for x in range(0, 600, 20)],  # 30 targets, 130 detections
        5: [{"bbox": [0, 0, 40, 40], "category_id": 1}, {"bbox": [0, 0, 40, 40], "category_id": 1},  # equal IoUs
            {"bbox": [100, 100, 40, 40], "category_id": 1}],
        6: [{"bbox": [0, 0, 32, 32], "category_id": 1}, {"bbox": [100, 0, 96, 96], "category_id": 1},
            {"bbox": [300, 0, 33, 31], "category_id": 2, "area": 32 * 32}],  # area as annotated, not w*h
        7: [{"bbox": [0, 0, 50, 50], "category_id": 1, "area": 1e10},     # ignored (area beyond every range)
            {"bbox": [0, 0, 60, 60], "category_id": 1}],                  # kept, lower IoU with the detection
        8: [{"bbox": [0, 0, 30, 30], "category_id": 3}],                  # category 3: not among the categories
    }
    coco = _dataset(tmp_path, images)
    dets = {
        1: _det([[0, 0, 10, 10, 0.9, person], [50, 50, 10, 10, 0.8, person], [10, 10, 20, 20, 0.7, person],
                 [200, 200, 10, 10, 0.6, person]]),
        2: _det([[0, 0, 10, 10, 0.5, person], [0, 0, 32, 32, 0.4, bicycle]]),
        3: _det([]),
        4: _det([[x + dx, 0, 10, 10, 0.5 - 0.001 * (x // 20), bicycle] for dx in (0, 1, 2, 3) for x in range(0, 600, 20)]
                + [[x, 100, 10, 10, 0.3, bicycle] for x in range(0, 100, 10)]),
        5: _det([[0, 0, 40, 40, 0.6, person], [0, 0, 40, 40, 0.6, person], [0, 0, 40, 40, 0.6, person],
                 [100, 100, 40, 40, 0.6, person], [101, 100, 40, 40, 0.6, person]]),
        6: _det([[0, 0, 32, 32, 0.9, person], [100, 0, 96, 96, 0.8, person], [300, 0, 32, 32, 0.7, bicycle],
                 [400, 0, 96, 96, 0.6, bicycle], [0, 200, 32, 32, 0.5, person]]),
        7: _det([[0, 0, 52, 52, 0.9, person], [0, 0, 49, 49, 0.8, person]]),
        8: _det([[0, 0, 30, 30, 0.9, 2]]),
    }
    assert len(dets[4]) > 100  # beyond maxDets (100) in one (image, category)
    reference = _pycocotools(coco, dets)
    for batch in (1, 3, len(dets)):
        assert assert_same_evaluation(_ours(coco, dets, batch), reference) > 0


@pytest.mark.parametrize("seed", range(6))
def test_random_crowded_images(tmp_path, matcher, seed):
    """Random images crowded with overlapping boxes on a coarse grid (equal IoUs, equal areas, areas on the
    range borders), crowds, scores from a few values (many ties), two categories, beyond maxDets at times."""
    rng = np.random.default_rng(seed)
    grid = np.array([0, 8, 16, 24, 32, 48, 64, 96, 128])

    def box():
        x, y = rng.choice(grid[:6], 2)
        w, h = rng.choice(grid[1:], 2)
        return [float(x), float(y), float(w), float(h)]

    images = {i: [{"bbox": box(), "category_id": int(rng.integers(1, 3)), "iscrowd": int(rng.random() < 0.15)}
                  for _ in range(int(rng.integers(0, 12)))] for i in range(1, 9)}
    coco = _dataset(tmp_path, images)
    dets = {i: _det([[*box(), float(rng.choice([0.9, 0.5, 0.5, 0.25])), float(rng.integers(0, 2))]
                     for _ in range(int(rng.choice([0, 5, 40, 120])))]) for i in images}
    dets[1] = _det([[*box(), 0.5, 0.0]])  # at least one detection: pycocotools' loadRes needs one
    reference = _pycocotools(coco, dets)
    assert assert_same_evaluation(_ours(coco, dets, 3), reference) > 0


def test_python_round_is_pythons_round():
    """The vectorised rounding of the COCO results against Python's round, bit for bit: values at and near
    every kind of decimal tie, negative ones, huge ones, infinities and NaN."""
    rng = np.random.default_rng(0)
    k = rng.integers(-10**7, 10**7, 20000)
    ties = np.concatenate([(k + 0.5) / 10**d for d in (3, 5)])
    values = np.concatenate([
        ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf),   # at and one ulp beside decimal ties
        np.arange(-4096, 4096) / 16,                                       # exact binary halves: 2.0625 -> 2062.5
        rng.uniform(0, 640, 20000), rng.uniform(0, 1, 20000),
        [0.0, -0.0, 1e-320, 2.0**52 / 1000, 1e15, -1e300, 1e308, np.inf, -np.inf, np.nan]])
    for digits in (3, 5):
        got = python_round(values, digits)
        want = np.array([round(float(v), digits) for v in values])
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan].view(np.int64), want[~nan].view(np.int64))


def test_coco_rows_are_yolov7s_rows(yolov5n_scored):
    """The results table as YOLOv7's test.py writes it, row by row: Python's round of each box value and score."""
    _, dets, _ = yolov5n_scored
    for image_id, det in list(dets.items())[:40]:
        want = [[image_id, COCO80_TO_91[int(cls)], round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3),
                 round(score, 5)] for x1, y1, x2, y2, score, cls in det.tolist()]
        got = coco_rows(image_id, det)
        assert [[type(v) for v in row] for row in got] == [[type(v) for v in row] for row in want]
        assert np.array_equal(np.array(got, dtype=np.float64).view(np.int64),
                              np.array(want, dtype=np.float64).reshape(-1, 7).view(np.int64))
