"""``yoloq hw validate`` and ``yoloq hw formats`` end to end on a few images."""

from __future__ import annotations

import json

import pytest

from sw.cli import main


def test_hw_validate_cli_writes_the_keys(yolov5n_path, coco_root, tmp_path):
    out = tmp_path / "v.json"
    assert main(["hw", "validate", "--weights", str(yolov5n_path), "--coco", str(coco_root), "--limit", "3",
                 "--calib-images", "4", "--method", "pwlq", "--bits", "4", "--granularity", "cshape",
                 "--json", str(out), "--report", str(tmp_path / "report"), "--quiet"]) == 0
    r = json.loads(out.read_text())
    for key in ("map50_sw", "map50_hw", "map50_95_sw", "map50_95_hw", "delta_map50", "map50_fp", "map50_int",
                "map50_95_int", "delta_map50_int"):
        assert isinstance(r[key], float)
    assert r["delta_map50"] == r["map50_hw"] - r["map50_sw"]
    assert r["delta_map50_int"] == r["map50_int"] - r["map50_sw"]
    assert len(r["layers"]) == 60 and all(layer["layer_sqnr_db"] > 15 for layer in r["layers"])
    # the integer network's tensors track the float ones, layer by layer
    assert all(layer["int_layer_sqnr_db"] > 10 for layer in r["layers"])
    report = (tmp_path / "report" / "layers.md").read_text()
    assert all(f"| {layer['name']} |" in report for layer in r["layers"])
    assert all(layer["acc_bits"] <= 53 for layer in r["layers"])


@pytest.mark.slow
def test_hw_formats_resumes(yolov5n_path, coco_root, tmp_path):
    args = ["hw", "formats", "--weights", str(yolov5n_path), "--coco", str(coco_root), "--limit", "2",
            "--calib-images", "2", "--granularity", "filter", "--act-bits-list", "6,8", "--scale-bits-list", "8",
            "-o", str(tmp_path), "--quiet"]
    assert main(args) == 0
    first = (tmp_path / "points" / "A6-F8.json").stat().st_mtime_ns
    assert main(args) == 0
    assert (tmp_path / "points" / "A6-F8.json").stat().st_mtime_ns == first  # not recomputed
    result = json.loads((tmp_path / "formats.json").read_text())
    assert [(p["act_bits"], p["scale_bits"]) for p in result["points"]] == [(6, 8), (8, 8)]
    assert (tmp_path / "formats.png").stat().st_size > 1000


def test_calibrating_as_far_as_some_layers_gives_them_the_whole_networks_quantizers(yolov5n):
    """`hw cosim --layers` / partial runs calibrate only up to the chosen layers; those layers' activation
    quantizers are exactly the ones a whole-network calibration gives them (per-layer sampling)."""
    from sw.intref.calibrate import calibrate
    from sw.paths import data_file
    from sw.quant.model import QuantSpec, quantize_model

    qm = quantize_model(yolov5n, QuantSpec("affine", 4, "filter"), progress=False)
    names = [n for n, r in qm.layers.items() if r.qt is not None]
    calib = data_file("coco128/images/train2017")
    kwargs = dict(images=3, img_size=320, batch_size=2, progress=False)
    whole = calibrate(qm.model, names, calib, **kwargs)
    chosen = ["model.2.cv1.conv", "model.4.cv2.conv"]
    partial = calibrate(qm.model, names, calib, stop_after=chosen, **kwargs)
    assert set(chosen) <= set(partial) and len(partial) < len(names) / 2  # stopped early
    assert set(partial) <= set(whole) and all(partial[n] == whole[n] for n in partial)
