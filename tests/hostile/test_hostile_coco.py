"""Hostile COCO folders: unreadable, oversized or mis-sized images are skipped with a warning and counted
(JSON ``skipped``); malformed entries are left out; past 5% skipped, eval fails naming the folder; non-finite
predictions are dropped, never scored."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from hostile_harness import run_cli
from hostile_payloads import png_header_only
from sw.eval.coco import detect, evaluate, load_coco

GOOD = 20


# The tests that read this module's expensive fixture (a subprocess that imports torch and runs the CLI case after
# case: tens of seconds) are one xdist group: `make test` (--dist loadgroup) runs them on one worker, which makes
# the fixture once instead of once on each worker.
ONE_WORKER = pytest.mark.xdist_group("hostile_coco")


def _subset(src, dst, n=GOOD):
    """The first ``n`` images of the shared COCO subset, as a COCO root of their own (annotations as
    given, minus 'area' and 'categories', which yoloq must not need)."""
    data = json.loads((src / "annotations/instances_val2017.json").read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:n]
    ids = {im["id"] for im in images}
    anns = [{k: v for k, v in a.items() if k != "area"} for a in data["annotations"] if a["image_id"] in ids]
    (dst / "images/val2017").mkdir(parents=True)
    (dst / "annotations").mkdir()
    for im in images:
        shutil.copy(src / "images/val2017" / im["file_name"], dst / "images/val2017" / im["file_name"])
    return {"images": images, "annotations": anns}


def _write(root, data):
    (root / "annotations/instances_val2017.json").write_text(json.dumps(data))


def _add_image(root, data, image_id, name, raw, h, w):
    (root / "images/val2017" / name).write_bytes(raw)
    data["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})


@pytest.fixture(scope="module")
def roots(coco_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coco")
    # one unreadable image among 20 good ones (plus one annotation without a bbox): evaluated, 1 skipped
    one = tmp / "one_bad"
    data = _subset(coco_root, one)
    _add_image(one, data, 10 ** 9, "broken.jpg", b"\xff\xd8 not a jpeg", 100, 100)
    data["annotations"].append({"id": 1, "image_id": data["images"][0]["id"], "category_id": 1, "iscrowd": 0})
    _write(one, data)
    # every class of bad image at once: more than 5% skipped, so eval fails naming the folder
    many = tmp / "many_bad"
    data = _subset(coco_root, many)
    real = data["images"][0]
    _add_image(many, data, 10 ** 9 + 1, "bomb.png", png_header_only(40000, 40000), 100, 100)
    _add_image(many, data, 10 ** 9 + 2, "mis-sized.jpg", (many / "images/val2017" / real["file_name"]).read_bytes(),
               real["height"] + 1, real["width"])
    _add_image(many, data, 10 ** 9 + 3, "zero.png", png_header_only(1, 1), 0, 0)
    os.mkfifo(many / "images/val2017/fifo.jpg")  # would block a reader that opens it
    data["images"].append({"id": 10 ** 9 + 5, "file_name": "fifo.jpg", "height": 10, "width": 10})
    data["images"].append({"id": "10", "file_name": "strid.jpg", "height": 10, "width": 10})
    data["images"].append({"id": 10 ** 9 + 4, "file_name": "../../escape.jpg", "height": 10, "width": 10})
    _write(many, data)
    bad_json = tmp / "bad_json"
    shutil.copytree(one, bad_json)
    (bad_json / "annotations/instances_val2017.json").write_text('{"images": 3, "annotations": []}')
    fifo = tmp / "fifo"
    (fifo / "annotations").mkdir(parents=True)
    (fifo / "images/val2017").mkdir(parents=True)
    os.mkfifo(fifo / "annotations/instances_val2017.json")
    return {"one": one, "many": many, "bad_json": bad_json, "fifo": fifo}


@pytest.fixture(scope="module")
def outcomes(roots, yolov5n_path, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cwd")
    args = ["--img", "64", "--quiet", "--weights", yolov5n_path]
    cases = {name: ["eval", "--coco", root, "--json", cwd / f"{name}.json", *args] for name, root in roots.items()}
    results = run_cli([(argv, cwd) for argv in cases.values()])
    return dict(zip(cases, results)), cwd


@ONE_WORKER
@pytest.mark.slow
def test_one_unreadable_image_is_skipped_and_counted(outcomes, roots):
    results, cwd = outcomes
    r = results["one"]
    assert r.rc == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert json.loads((cwd / "one.json").read_text())["skipped"] == 1
    assert json.loads((cwd / "one.json").read_text())["images"] == GOOD
    warnings = [line for line in r.lines if line.startswith("yoloq: warning:")]
    assert any("broken.jpg" in line and "skipped" in line for line in warnings), r.stderr
    assert any("1 annotations without" in line for line in warnings), r.stderr


@ONE_WORKER
@pytest.mark.slow
def test_too_many_bad_images_fail_naming_the_folder(outcomes, roots):
    results, cwd = outcomes
    r = results["many"]
    r.assert_refused(r"6 of 26 images skipped", names=str(roots["many"]))
    for name in ("bomb.png", "mis-sized.jpg", "fifo.jpg: not a regular file"):
        assert any(name in line for line in r.lines[:-1]), r.stderr
    assert any("image 10: entry without an integer id" in line or "images[" in line for line in r.lines), r.stderr
    assert not (cwd / "many.json").exists()


@ONE_WORKER
@pytest.mark.slow
@pytest.mark.parametrize("name, pattern", [("bad_json", r"not a COCO instances file"),
                                           ("fifo", r"COCO annotation file is not a regular file")])
def test_malformed_annotation_file(outcomes, roots, name, pattern):
    results, cwd = outcomes
    results[name].assert_refused(pattern, names=str(roots[name] / "annotations/instances_val2017.json"))
    assert not (cwd / f"{name}.json").exists()


@ONE_WORKER
@pytest.mark.slow
def test_non_finite_predictions_are_never_scored(roots):
    """A model whose outputs are NaN/inf (the NaN-anchor checkpoint scored mAP 0.750 before) scores 0."""
    coco = load_coco(roots["one"], limit=4)

    def broken(x):
        pred = torch.full((x.shape[0], 50, 85), math.nan)
        pred[:, :25] = math.inf
        return pred

    dets = detect(broken, coco, img_size=64, progress=False)
    assert all(torch.isfinite(d).all() and len(d) == 0 for d in dets.values())
    result = evaluate(broken, coco, img_size=64, progress=False)
    assert result["map50"] == 0.0 and result["precision"] == 0.0


def test_oversized_annotation_file_is_refused_unread(tmp_path):
    from sw.errors import DataNotFoundError

    (tmp_path / "images/val2017").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    with open(tmp_path / "annotations/instances_val2017.json", "wb") as fh:
        fh.truncate(65 << 20)  # sparse: nothing to read, nothing parsed
    with pytest.raises(DataNotFoundError, match="larger than the 64 MiB accepted"):
        load_coco(tmp_path)
