"""Beyond the paper: GPTQ rounding on the fixed grid, bias correction and the storage-budgeted allocation."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F

from sw.errors import QuantizationError
from sw.quant.budget import Option, solve
from sw.quant.calibration import InputStats
from sw.quant.granularity import SINGLE
from sw.quant.model import QuantSpec, _correct_bias, quantize_layer
from sw.quant.quantizer import quantize_tensor
from sw.quant.record import METHODS, dequantize
from sw.quant.rounding import Grid, bias_shift, gptq

CALIB = "coco128/images/train2017"


def _stats_of(x: torch.Tensor, conv: torch.nn.Conv2d) -> InputStats:
    """Exact input statistics of ``conv`` over every position of ``x``."""
    cols = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    cols = cols.permute(1, 0, 2).reshape(cols.shape[1], -1).double()
    return InputStats(cols @ cols.t() / cols.shape[1], cols.mean(1), cols.shape[1])


def _layer(seed=0, shape=(12, 6, 3, 3)):
    """A conv weight with per-filter scales and correlated, non-centred inputs (as after SiLU)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, 1, 1, generator=g)
    mix = torch.randn(shape[1], shape[1], generator=g)
    x = torch.einsum("ij,bjhw->bihw", mix, torch.randn(4, shape[1], 12, 12, generator=g))
    x = F.silu(x) + 0.1
    conv = torch.nn.Conv2d(shape[1], shape[0], shape[2], padding=shape[2] // 2, bias=False)
    return w, x, conv


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("granularity", SINGLE)
def test_grid_rounding_is_the_quantizer_and_gptq_keeps_the_grid(method, granularity):
    w, x, conv = _layer()
    stats = _stats_of(x, conv)
    qt = quantize_tensor(w, method, 4, granularity)
    codes, region, _ = Grid(qt, w).round(w.reshape(w.shape[0], -1), slice(None))
    assert torch.equal(codes.reshape(qt.shape).to(torch.int8), qt.codes)  # one definition of "nearest"
    if region is not None:
        assert torch.equal(region.reshape(qt.shape), qt.region)
    better = gptq(w, qt, stats)
    # same parameters, codes in range: the integer contract and the artifact format are unchanged
    assert better.scale is qt.scale and better.zero_point is qt.zero_point and better.breakpoint is qt.breakpoint
    assert better.codes.dtype == torch.int8 and better.codes.shape == qt.codes.shape
    lo = -(1 << 3) + (method == "symmetric")
    assert int(better.codes.min()) >= lo and int(better.codes.max()) <= 7
    w_hat = dequantize(better)
    if method != "pwlq":  # every GPTQ weight is a level of its group's grid: requantizing it changes nothing
        again, _, _ = Grid(better, w).round(w_hat.reshape(w.shape[0], -1), slice(None))
        assert torch.equal(again.reshape(qt.shape).to(torch.int8), better.codes)
    # the point of it: a lower layer-output error on the calibration data than nearest rounding
    assert stats.output_mse(w_hat - w) < stats.output_mse(dequantize(qt) - w)


@pytest.mark.parametrize("method", ["pwlq", "affine"])
def test_quantize_layer_gptq_picks_least_output_error_in_a_mix(method):
    w, x, conv = _layer(seed=1)
    stats = _stats_of(x, conv)
    near = quantize_layer("l", w, QuantSpec(method, 4, "mix3"), 4, stats)
    best = quantize_layer("l", w, QuantSpec(method, 4, "mix3", rounding="gptq"), 4, stats)
    assert best.output_mse < near.output_mse
    assert best.output_mse == min(best.candidates.values())


def test_bias_correction_removes_the_mean_output_shift():
    w, x, conv = _layer(seed=2)
    stats = _stats_of(x, conv)
    qt = quantize_tensor(w, "affine", 3, "filter")
    w_hat = dequantize(qt)

    class Block(torch.nn.Module):  # the shape of yoloq's Conv: conv then BN
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(6, 12, 3, padding=1, bias=False)
            self.bn = torch.nn.BatchNorm2d(12).eval()

    model = torch.nn.Module()
    model.blk = Block()
    with torch.no_grad():
        model.blk.bn.running_mean.normal_()
        model.blk.conv.weight.copy_(w)
        ref = model.blk.bn(model.blk.conv(x)).mean((0, 2, 3))
        model.blk.conv.weight.copy_(w_hat)
        before = model.blk.bn(model.blk.conv(x)).mean((0, 2, 3))
        assert _correct_bias(model, "blk.conv", bias_shift(w, w_hat, stats)) == "bias corrected (BN mean)"
        after = model.blk.bn(model.blk.conv(x)).mean((0, 2, 3))
    assert (after - ref).abs().max() < 1e-3 * (before - ref).abs().max()
    # a conv with a bias takes the correction there
    biased = torch.nn.Conv2d(6, 12, 3, padding=1)
    holder = torch.nn.Module()
    holder.c = biased
    with torch.no_grad():
        b0 = biased.bias.clone()
        _correct_bias(holder, "c", bias_shift(w, w_hat, stats))
    assert torch.allclose(biased.bias, b0 - bias_shift(w, w_hat, stats))


def _brute_force(layers, budget):
    best = None
    for pick in itertools.product(*[range(len(o)) for o in layers]):
        s = sum(layers[i][j].storage_bits for i, j in enumerate(pick))
        c = sum(layers[i][j].cost for i, j in enumerate(pick))
        if s <= budget and (best is None or c < best[0] or (c == best[0] and s < best[1])):
            best = (c, s, list(pick))
    return best


def test_budget_solver_is_exact_against_brute_force():
    rng = random.Random(0)
    for case in range(300):
        n_layers = rng.randint(1, 5)
        layers = [[Option(rng.randint(1, 40), rng.choice([rng.random(), float(rng.randint(0, 3))]))
                   for _ in range(rng.randint(1, 4))] for _ in range(n_layers)]
        least = sum(min(o.storage_bits for o in opts) for opts in layers)
        most = sum(max(o.storage_bits for o in opts) for opts in layers)
        budget = rng.randint(least, most)
        got = solve(layers, budget)
        cost, storage, _ = _brute_force(layers, budget)
        assert got.storage_bits <= budget, case
        assert got.cost == pytest.approx(cost, abs=1e-12), case
        assert got.storage_bits == storage, case
        assert got.storage_bits == sum(layers[i][j].storage_bits for i, j in enumerate(got.choices))


def test_budget_solver_refuses_an_impossible_budget():
    with pytest.raises(QuantizationError, match="below the least possible"):
        solve([[Option(10, 1.0), Option(20, 0.5)], [Option(5, 1.0)]], 14)


def test_spec_rejects_bad_options():
    for bad in (dict(rounding="round"), dict(calib_images=0), dict(budget_bits=-1.0), dict(budget_bits=float("nan"))):
        with pytest.raises(QuantizationError):
            QuantSpec(**bad).validate()


# ---- real YOLOv5n: the improved artifact, the hardware, the budget ------------------------------------------------
# The two tests of the GPTQ artifact are one xdist group: `make test` (--dist loadgroup) runs them on one worker,
# which quantizes it once instead of once on each worker.
GPTQ_GROUP = pytest.mark.xdist_group("gptq_artifact")


@pytest.fixture(scope="module")
def gptq_artifact(yolov5n_path, tmp_path_factory):
    """YOLOv5n, 4-bit PWLQ F-shape, GPTQ rounding and bias correction on 2 calibration images, via the CLI."""
    from sw.cli import main

    out = tmp_path_factory.mktemp("gptq")
    path, report = out / "v5n-gptq.yqa", out / "v5n-gptq.json"
    assert main(["quantize", "--weights", str(yolov5n_path), "-o", str(path), "--json", str(report), "--quiet",
                 "--granularity", "fshape", "--rounding", "gptq", "--bias-correction", "--calib-images", "2"]) == 0
    return path, json.loads(report.read_text())


@pytest.mark.slow
@GPTQ_GROUP
def test_gptq_artifact_lowers_output_error_and_keeps_format(gptq_artifact, yolov5n):
    from sw.checkpoint.artifact import VERSION, load_quantized
    from sw.quant.calibration import collect_input_stats
    from sw.quant.model import default_calib_dir, prepare

    path, report = gptq_artifact
    assert report["spec"]["rounding"] == "gptq" and report["spec"]["bias_correction"]
    qm = load_quantized(path).extras["quantized"]
    manifest = json.loads(__import__("zipfile").ZipFile(path).read("yoloq.json"))
    assert manifest["version"] == VERSION == 2
    fp = prepare(yolov5n, False)
    convs = fp.conv_layers()
    stats = collect_input_stats(fp, list(convs), default_calib_dir(), images=2, progress=False)
    changed = lower = 0
    for name, r in qm.layers.items():
        w = convs[name].weight.detach()
        near = quantize_tensor(w, "pwlq", 4, "fshape")
        assert torch.equal(r.qt.scale, near.scale) and torch.equal(r.qt.breakpoint, near.breakpoint)  # same grid
        changed += int((r.qt.codes != near.codes).sum())
        e_gptq, e_near = stats[name].output_mse(dequantize(r.qt) - w), stats[name].output_mse(dequantize(near) - w)
        assert e_gptq <= e_near, name
        lower += e_gptq < e_near
    assert changed > 0.05 * sum(r.qt.numel for r in qm.layers.values())
    assert lower >= 0.9 * len(qm.layers)
    # bias correction went into the BN means of the deploy model (BN itself stays float)
    bn = dict(qm.model.named_modules())["model.2.cv1.bn"]
    assert not torch.equal(bn.running_mean, dict(fp.named_modules())["model.2.cv1.bn"].running_mean)


@pytest.mark.slow
@GPTQ_GROUP
def test_gptq_artifact_builds_and_cosimulates_bit_exactly(gptq_artifact, tmp_path):
    from sw.cli import main

    path, _ = gptq_artifact
    name = "model.2.m.0.cv2.conv"
    assert main(["hw", "build", "--quantized", str(path), "--layer", name, "--lanes", "8", "-o",
                 str(tmp_path / "pe")]) == 0
    out = tmp_path / "cosim.json"
    assert main(["hw", "cosim", "--quantized", str(path), "--layers", name, "--positions", "2",
                 "--calib-images", "1", "--img", "256", "--lanes", "8", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["mismatches"] == 0 and r["macs"] == 2 * 16 * 16 * 9


@pytest.mark.slow
def test_budget_allocation_meets_the_budget_and_lists_choices(yolov5n_path, tmp_path, capsys):
    from sw.cli import main

    report = tmp_path / "budget.json"
    assert main(["quantize", "--weights", str(yolov5n_path), "-o", str(tmp_path / "b.yqa"), "--json", str(report),
                 "--quiet", "--method", "affine", "--granularity", "filter", "--budget-bits", "4.5",
                 "--calib-images", "1"]) == 0
    r = json.loads(report.read_text())
    t = r["totals"]
    assert t["storage_bits"] <= 4.5 * t["weights"]
    assert t["storage_bits"] > 4.3 * t["weights"]  # an optimum spends (almost) all of the budget
    assert len({row["bits"] for row in r["layers"]}) > 1
    printed = capsys.readouterr().out
    assert "budget 4.5 bits/weight" in printed
    assert all(f"| {row['name']} |" in printed for row in r["layers"])


@pytest.mark.slow
def test_calibration_statistics_are_deterministic_under_the_seed(yolov5n):
    from sw.quant.calibration import collect_input_stats
    from sw.quant.model import default_calib_dir, prepare

    m = prepare(yolov5n, False)
    names = ["model.0.conv", "model.8.cv1.conv"]
    a, b, c = (collect_input_stats(m, names, default_calib_dir(), images=1, seed=s, progress=False) for s in (0, 0, 1))
    for n in names:
        assert torch.equal(a[n].second_moment, b[n].second_moment) and torch.equal(a[n].mean, b[n].mean)
    assert not torch.equal(a["model.0.conv"].second_moment, c["model.0.conv"].second_moment)  # positions sampled
    assert a["model.0.conv"].samples == 2048  # 320x320 output positions, subsampled
    assert a["model.8.cv1.conv"].samples in (20 * 15, 15 * 20, 20 * 20)  # stride 32 on a letterboxed 640 image: all
