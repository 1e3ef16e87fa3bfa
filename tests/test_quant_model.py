"""Model-level quantization: policy, mixes, accounting, the artifact and the CLI."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from sw.checkpoint import load_model
from sw.cli import main
from sw.errors import CheckpointError, QuantizationError
from sw.quant.accounting import FP16_BITS, SHIFT_BITS, quantized_storage, savings, scale_shift, signed_width
from sw.quant.artifact import load_quantized, save_quantized
from sw.quant.model import QuantSpec, quantize_model
from sw.quant.quantizer import quantize_tensor
from sw.quant.record import dequantize


@pytest.fixture(scope="module")
def pwlq_mix3(yolov5n):
    return quantize_model(yolov5n, QuantSpec("pwlq", 4, "mix3"), progress=False)


def test_fake_quant_weights_are_the_records(pwlq_mix3):
    convs = pwlq_mix3.model.conv_layers()
    assert list(convs) == list(pwlq_mix3.layers)
    for name, r in pwlq_mix3.layers.items():
        assert torch.equal(convs[name].weight.detach(), dequantize(r.qt))


def test_mix3_keeps_least_mse_candidate(pwlq_mix3):
    for r in pwlq_mix3.layers.values():
        assert set(r.candidates) == {"filter", "fshape", "cshape"}
        assert r.granularity == min(r.candidates, key=r.candidates.get)
        assert r.mse == r.candidates[r.granularity]


def test_bn_is_never_quantized(yolov5n, pwlq_mix3):
    orig = {k: v for k, v in yolov5n.state_dict().items() if ".bn." in k}
    quant = pwlq_mix3.model.state_dict()
    assert orig and all(torch.equal(quant[k], v) for k, v in orig.items())


def test_mix4_offers_channelwise_only_where_channels_hold_several_weights(yolov5n):
    qm = quantize_model(yolov5n, QuantSpec("affine", 4, "mix4"), progress=False)
    for r in qm.layers.values():
        several = r.shape[2] * r.shape[3] > 1
        assert set(r.candidates) == ({"filter", "channel", "fshape", "cshape"} if several else
                                     {"filter", "fshape", "cshape"})
        assert r.qt is not None and r.granularity == min(r.candidates, key=r.candidates.get)
    assert qm.totals()["saving_paper"] > 2.5  # no layer left in FP16 (the paper's mix of 4: 2.91x)
    # single-granularity channel-wise keeps the paper's policy: 1x1 convs in FP16, counted at 16 bits
    ch = quantize_model(yolov5n, QuantSpec("affine", 4, "channel"), progress=False)
    one_by_one = [r for r in ch.layers.values() if r.shape[2] * r.shape[3] == 1]
    assert one_by_one and all(r.granularity == "fp16" and r.qt is None for r in one_by_one)
    assert all(r.storage.fp16_bits == FP16_BITS * r.storage.weights for r in one_by_one)


def test_rate_aware_mix_trades_error_for_storage(yolov5n):
    plain = quantize_model(yolov5n, QuantSpec("affine", 4, "mix4"), progress=False).totals()
    rate = quantize_model(yolov5n, QuantSpec("affine", 4, "mix4", rate_lambda=0.05), progress=False).totals()
    assert rate["saving_storage"] > plain["saving_storage"] + 0.1
    assert rate["mse"] > plain["mse"]


def test_layer_policy_flags(yolov5n):
    qm = quantize_model(yolov5n, QuantSpec("affine", 4, "filter", first_last_8bit=True), progress=False)
    bits = {n: r.bits for n, r in qm.layers.items()}
    assert bits["model.0.conv"] == 8 and bits["model.24.m.0"] == 8 and bits["model.2.cv1.conv"] == 4
    qm = quantize_model(yolov5n, QuantSpec("affine", 4, "filter", include_detect=False), progress=False)
    assert qm.layers["model.24.m.1"].qt is None and qm.layers["model.23.cv3.conv"].qt is not None
    qm = quantize_model(yolov5n, QuantSpec("affine", 4, "filter", fold_bn=True), progress=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in qm.model.modules())


def test_storage_accounting_hand_example():
    w = torch.randn(4, 3, 3, 3)
    aff = quantize_tensor(w, "affine", 4, "filter")
    st = quantized_storage(aff, scale_bits=16)
    # 108 weights x 4 bits; 4 groups x (16-bit scale + 4-bit zero-point); one 8-bit shift per layer
    assert (st.code_bits, st.region_bits, st.param_bits) == (432, 0, 4 * 20 + SHIFT_BITS)
    pw = quantize_tensor(w, "pwlq", 4, "filter")
    st = quantized_storage(pw, scale_bits=16)
    # PWLQ: two 16-bit scales and the breakpoint P = round(p 2^E) at the scales' shift, at its unsigned width:
    # p is 7.5 centre steps (k = 4), so P needs about 16 + 3 bits
    big_p = torch.round(pw.breakpoint * 2.0 ** scale_shift(pw.scale, 16))
    bw = int(big_p.max()).bit_length()
    assert 16 < bw <= 20
    assert (st.code_bits, st.region_bits, st.param_bits) == (432, 108, 4 * (16 + 16 + bw) + SHIFT_BITS)
    tot = savings([st])
    assert tot["saving_paper"] == pytest.approx(108 * 16 / (432 + st.param_bits))
    assert tot["saving_storage"] == pytest.approx(108 * 16 / (432 + 108 + st.param_bits))
    assert signed_width(torch.tensor([-8, 7])) == 4 and signed_width(torch.tensor([8])) == 5


def test_nan_weights_and_bad_requests_are_named():
    w = torch.randn(2, 2, 3, 3)
    w[1, 0, 0, 0] = float("nan")
    with pytest.raises(QuantizationError, match="model.7.conv: 1 weight"):
        quantize_tensor(w, "affine", 4, "filter", name="model.7.conv")
    with pytest.raises(QuantizationError, match="from 2 to 8, got 9"):
        quantize_tensor(torch.randn(2, 2, 3, 3), "affine", 9, "filter")
    with pytest.raises(QuantizationError, match="unknown granularity"):
        QuantSpec("affine", 4, "row").validate()
    with pytest.raises(QuantizationError, match="expected a conv weight"):
        quantize_tensor(torch.randn(4, 4), "affine", 4, "filter")


def test_artifact_round_trip(pwlq_mix3, tmp_path):
    path = tmp_path / "q.yqa"
    save_quantized(pwlq_mix3, path, source="yolov5n.pt")
    loaded = load_model(path)
    assert loaded.kind == "quantized"
    qm = loaded.extras["quantized"]
    assert qm.spec == pwlq_mix3.spec
    for name, r in pwlq_mix3.layers.items():
        q = qm.layers[name]
        assert q.granularity == r.granularity and q.mse == r.mse
        assert torch.equal(q.qt.codes, r.qt.codes) and torch.equal(q.qt.region, r.qt.region)
        assert torch.equal(q.qt.scale, r.qt.scale) and torch.equal(q.qt.zero_point, r.qt.zero_point)
        assert torch.equal(q.qt.breakpoint, r.qt.breakpoint)
    assert qm.totals() == pwlq_mix3.totals()
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), pwlq_mix3.model(x))


def _rewrite(src, dst, entry, data):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            if item != entry:
                zout.writestr(item, zin.read(item))
        if data is not None:
            zout.writestr(entry, data)


def _npy(a):
    import io
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_artifact_rejects_tampering(pwlq_mix3, tmp_path):
    good = tmp_path / "q.yqa"
    save_quantized(pwlq_mix3, good)
    name = next(iter(pwlq_mix3.layers))
    codes = pwlq_mix3.layers[name].qt.codes.numpy().copy()
    codes.flat[0] = 100  # outside 4-bit range
    cases = {
        "outside the 4-bit range": (f"quant/{name}/codes.npy", _npy(codes)),
        "is missing": (f"quant/{name}/scale.npy", None),
        "expected float64": (f"quant/{name}/scale.npy", _npy(np.ones((1, 2), np.float32))),
        "not a plain numeric array": (f"quant/{name}/zero_point.npy", _npy(np.array([object()], dtype=object))),
        "breakpoint.npy is missing": (f"quant/{name}/breakpoint.npy", None),
        "breakpoints must be finite and non-negative": (
            f"quant/{name}/breakpoint.npy", _npy(-pwlq_mix3.layers[name].qt.breakpoint.numpy())),
        "artifact version 1 is not supported": (
            "yoloq.json", json.dumps({**json.loads(zipfile.ZipFile(good).read("yoloq.json")), "version": 1})),
        "version 99": ("yoloq.json", json.dumps({**json.loads(zipfile.ZipFile(good).read("yoloq.json")), "version": 99})),
        "not a yoloq quantized artifact": ("yoloq.json", json.dumps([1, 2])),
    }
    floats = sorted(n for n in zipfile.ZipFile(good).namelist() if n.startswith("float/"))
    if floats:
        cases["is not a plain numeric array"] = (floats[0], _npy(np.array([object()], dtype=object)))
    for message, (entry, data) in cases.items():
        bad = tmp_path / "bad.yqa"
        _rewrite(good, bad, entry, data)
        with pytest.raises(CheckpointError, match=message):
            load_quantized(bad)


def test_cli_quantize_report_and_eval(yolov5n_path, coco_root, tmp_path, capsys):
    out, report = tmp_path / "q.yqa", tmp_path / "r.json"
    assert main(["quantize", "--weights", str(yolov5n_path), "--method", "affine", "--bits", "4",
                 "--granularity", "cshape", "-o", str(out), "--json", str(report), "--quiet"]) == 0
    r = json.loads(report.read_text())
    assert {"saving_paper", "saving_storage", "mse"} <= set(r["totals"])
    row = r["layers"][0]
    assert row["name"] == "model.0.conv" and {"granularity", "mse", "sqnr_db", "bits"} <= set(row)
    assert r["totals"]["saving_paper"] == r["totals"]["saving_storage"]  # affine: no region bit
    assert main(["eval", "--weights", str(out), "--coco", str(coco_root), "--limit", "4", "--quiet"]) == 0
    assert main(["quantize", "--weights", str(yolov5n_path), "--bits", "9", "-o", str(out)]) == 2
    assert "bit width must be an integer from 2 to 8, got 9" in capsys.readouterr().err


def test_cli_refuses_unwritable_outputs_before_any_work(yolov5n_path, tmp_path, capsys):
    folder, regular = tmp_path / "adir", tmp_path / "regular.txt"
    folder.mkdir()
    regular.write_text("keep me")
    out = tmp_path / "q.yqa"
    assert main(["quantize", "--weights", str(yolov5n_path), "-o", str(out), "--json", str(folder)]) == 2
    assert f"--json {folder}: is a folder" in capsys.readouterr().err
    assert not out.exists()  # refused before quantizing: nothing half done
    assert main(["quantize", "--weights", str(yolov5n_path), "-o", str(folder)]) == 2
    assert "is a folder, expected a file name" in capsys.readouterr().err
    assert main(["hw", "build", "--quantized", str(out), "--layer", "model.0.conv", "-o", str(regular)]) == 2
    assert f"yoloq hw build: error: -o {regular}: is a file" in capsys.readouterr().err
    assert regular.read_text() == "keep me"
    with pytest.raises(SystemExit) as e:  # flag ranges are usage errors, named, before anything runs
        main(["hw", "validate", "--weights", str(yolov5n_path), "--act-bits", "0"])
    assert e.value.code == 2 and "argument --act-bits: must be from 2 to 16, got 0" in capsys.readouterr().err


PAPER_TABLE1_SAVING = {"filter": 3.97, "fshape": 3.93, "cshape": 3.93, "channel": 1.68}


def test_yolov7_affine_saving_close_to_paper_table1(yolov7_generated_path):
    """On YOLOv7's own shapes, saving_paper for 4-bit affine lands within 0.03 of the paper's Table I."""
    model = load_model(yolov7_generated_path).model
    for gran, paper in PAPER_TABLE1_SAVING.items():
        totals = quantize_model(model, QuantSpec("affine", 4, gran), progress=False).totals()
        assert totals["weights"] == 36_881_504
        assert abs(totals["saving_paper"] - paper) < 0.03, (gran, totals["saving_paper"])
