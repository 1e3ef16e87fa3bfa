"""Feature-map co-simulation of the layer unit (PE + epilogue): its output codes, code for code, against the
integer network's tensors (sim.featuremap, ``yoloq hw cosim --unit layer``); mutations must be caught."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sim.cosim import Options, cosimulate, plan_builds
from sim.stimulus import LayerCase, reference_accumulators
from sim.tb_pe import format_mismatch
from sw.cli import main
from sw.intref.contract import ActQuant, LayerContract
from sw.intref.epilogue import LayerEpilogue, derive_epilogue
from sw.quant.quantizer import quantize_tensor

LANES = 4


def unit_case(method="pwlq", gran="cshape", shape=(6, 5, 3, 3), positions=24, seed=0, name="model.1.conv",
              detect=False) -> LayerCase:
    """A quantized layer with a derived epilogue; activations spread so the codes cover much of the table.
    ``detect``: compared on t = acc + K_c, as a Detect conv is."""
    g = torch.Generator().manual_seed(seed)
    qt = quantize_tensor(torch.randn(shape, generator=g) * 0.1, method, 4, gran)
    contract = LayerContract.from_record(name, qt, 8, 16)
    act_in, out = ActQuant(8, 0.03, -110), ActQuant(8, 0.02, -100)
    pre_scale = 2.0 ** -contract.shift * act_in.scale * 2.0 ** (contract.fmt.acc_bits - 14)
    bias = torch.randn(shape[0], generator=g) * 0.3
    bias[0] = 0.0
    ep = derive_epilogue(contract, act_in, bias, pre_scale, out, "silu")
    cols = torch.randint(-128, 128, (positions, contract.fmt.fan_in), generator=g).numpy().astype(np.int64)
    cols[0] = act_in.zero_point  # the value 0 everywhere: channel 0 (no bias) has t = 0, pre-activation 0
    acc = reference_accumulators(contract, cols)
    if detect:
        zeros = torch.zeros_like(ep.offset)
        ep = LayerEpilogue(name, ep.fmt, ep.offset, zeros, zeros.clone(), torch.zeros_like(ep.table), "identity")
        return LayerCase(contract, cols, acc, epilogue=ep, outputs=acc + ep.offset.numpy()[None], compare="sum")
    outputs = ep.apply(torch.from_numpy(acc), channel_dim=1).numpy()
    return LayerCase(contract, cols, acc, epilogue=ep, outputs=outputs)


def test_one_layer_unit_build_covers_layers_of_different_epilogues():
    a = unit_case(seed=1)
    b = unit_case(shape=(9, 5, 3, 3), seed=2, name="model.2.conv", detect=True)
    (build,) = plan_builds([a, b], LANES, unit="layer")
    assert build.unit and build.cfg.epilogue.channels == 9
    for case in (a, b):
        build.cfg.epilogue.check_fits(case.epilogue)
    assert build.cfg.epilogue.fmt.acc_bits >= build.pe.acc_bits


def test_testbench_hdl_is_held_to_the_layer_unit(tmp_path, monkeypatch):
    """The YOLOQ_UNIT branch of the testbench connects exactly the layer unit's ports."""
    import sim.wrapper as wrapper

    (build,) = plan_builds([unit_case()], LANES, unit="layer")
    wrapper.check_testbench(build.cfg)
    wrapper.check_testbench(build.pe)  # and the PE branch the PE's
    fake = tmp_path / "yoloq_cosim_tb.v"
    fake.write_text(wrapper.TESTBENCH_HDL.read_text().replace(".table__en(t_en), ", ""))
    monkeypatch.setattr(wrapper, "TESTBENCH_HDL", fake)
    with pytest.raises(ValueError):
        wrapper.check_testbench(build.cfg)
    wrapper.check_testbench(build.pe)


def test_a_pe_case_is_refused_by_the_layer_unit():
    from sim.cosim import CosimError

    case = unit_case()
    bare = LayerCase(case.contract, case.columns, case.expected)
    with pytest.raises(CosimError, match="no epilogue"):
        plan_builds([bare], LANES, unit="layer")


@pytest.mark.slow
def test_layer_unit_codes_and_detect_sums_match_in_icarus():
    cases = [unit_case(seed=1), unit_case(shape=(9, 5, 1, 1), seed=2, name="model.2.conv", detect=True),
             unit_case("affine", "filter", shape=(7, 4, 3, 3), seed=3, name="model.3.conv")]
    result = cosimulate(cases, Options(sim="icarus", lanes=LANES, unit="layer", progress=False))
    assert result.mismatches == 0 and not result.problems, [format_mismatch(r) for r in result.listed[:5]]
    assert result.outputs_checked == sum(c.outputs.size for c in cases)
    assert all(b["passed"] for b in result.builds)


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["floor_rounding", "table_entry_off_by_one"])
def test_epilogue_mutations_are_caught(fault):
    case = unit_case(seed=4, positions=32)
    # make sure the mutated paths are reached: pre-activation 0 (the entry the fault changes) and odd
    # products at shift 1 (where half up and floor differ) are both among the expected codes
    pre = case.epilogue.pre_activation(torch.from_numpy(case.expected), channel_dim=1)
    assert bool((pre == 0).any())
    result = cosimulate([case], Options(sim="icarus", lanes=LANES, unit="layer", fault=fault, progress=False))
    assert result.mismatches > 0


@pytest.mark.slow
def test_yolov5n_feature_maps_every_position_in_verilator(yolov5n_path, coco_root, tmp_path):
    """Six real YOLOv5n layers on a real COCO image at 160 px, every output position and channel: the first
    conv, a stride-2 3x3, a 1x1, a conv feeding a Concat, a C3 bottleneck conv before its residual add, a
    Detect conv (compared on t)."""
    layers = ["model.0.conv", "model.1.conv", "model.2.cv1.conv", "model.2.cv2.conv", "model.2.m.0.cv2.conv",
              "model.24.m.0"]
    out = tmp_path / "c.json"
    rc = main(["hw", "cosim", "--weights", str(yolov5n_path), "--method", "pwlq", "--bits", "4",
               "--granularity", "mix3", "--unit", "layer", "--layers", *layers, "--img", "160",
               "--calib-images", "4", "--sim", "verilator", "--coco", str(coco_root), "--quiet", "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["mismatches"] == 0, report["mismatch_examples"][:5]
    assert report["positions"] == "all" and report["layers_run"] == 6
    per_layer = {layer["name"]: layer["results"] for layer in report["layers"]}
    # every position of each feature map at 160 px (letterboxed to 160 x 128... the image's padded shape)
    assert per_layer["model.0.conv"] % 16 == 0 and per_layer["model.0.conv"] >= 80 * 64 * 16
    assert report["outputs_checked"] == sum(per_layer.values())


@pytest.mark.slow
def test_every_yolov7_layer_at_a_position_in_verilator(yolov7_pwlq_mix3, coco_root, tmp_path):
    """Every layer of the generated YOLOv7 (4-bit PWLQ mix3) through the layer unit at one output position
    (the corner, where padding reaches furthest, is sampled once there are two)."""
    out = tmp_path / "c.json"
    rc = main(["hw", "cosim", "--quantized", str(yolov7_pwlq_mix3), "--unit", "layer", "--positions", "1",
               "--img", "128", "--calib-images", "2", "--sim", "verilator", "--coco", str(coco_root), "--quiet",
               "--json", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["mismatches"] == 0, report["mismatch_examples"][:5]
    assert report["layers_run"] == 92 and report["outputs_checked"] == sum(r["results"] for r in report["layers"])
