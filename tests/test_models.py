"""yoloq's own architecture definitions against the official configs, and config parsing safety."""

from __future__ import annotations


import pytest
import torch
import yaml

from sw.errors import ConfigError
from sw.models import YoloModel, builtin_config, to_deploy
from sw.models.yolo import parse_arg
from sw.paths import data_root

REFERENCE = data_root().parent / "reference" / "yolov7-cfg"


@pytest.mark.parametrize("name, ref", [
    ("yolov7", "deploy-yolov7.yaml"), ("yolov7-training", "training-yolov7.yaml"),
    ("yolov7-tiny", "deploy-yolov7-tiny.yaml"), ("yolov7-tiny-training", "training-yolov7-tiny.yaml"),
])
def test_builtin_matches_official_config(name, ref):
    path = REFERENCE / ref
    assert path.is_file(), f"reference config missing: {path}"
    official = yaml.safe_load(path.read_text())
    ours = builtin_config(name)
    for key in ("nc", "depth_multiple", "width_multiple", "anchors"):
        assert ours[key] == official[key], key
    for part in ("backbone", "head"):
        assert len(ours[part]) == len(official[part])
        for i, (a, b) in enumerate(zip(ours[part], official[part])):
            assert a == b, f"{part} row {i}: {a} != {b}"


def test_yolov7_deploy_has_92_convs_and_36881504_weights():
    unfused = YoloModel(builtin_config("yolov7"))
    assert len(unfused.conv_layers()) == 95  # each RepConv has a 3x3 and a 1x1 branch before fusing
    model = to_deploy(unfused)
    convs = model.conv_layers()
    assert len(convs) == 92
    assert sum(c.weight.numel() for c in convs.values()) == 36_881_504
    assert list(convs)[0] == "model.0.conv"
    assert "model.102.rbr_reparam" in convs and "model.105.m.2" in convs


def test_yolov7_training_form_fuses_to_deploy_counts():
    model = to_deploy(YoloModel(builtin_config("yolov7-training")))
    convs = model.conv_layers()
    assert len(convs) == 92
    assert sum(c.weight.numel() for c in convs.values()) == 36_881_504


def test_yolov7_parameter_count_matches_reference_readme():
    # ../shared/reference/README.md: yolov7 36.9M parameters (deploy form), yolov7-tiny 6.2M
    n7 = sum(p.numel() for p in to_deploy(YoloModel(builtin_config("yolov7"))).parameters())
    nt = sum(p.numel() for p in YoloModel(builtin_config("yolov7-tiny")).parameters())
    assert round(n7 / 1e6, 1) == 36.9
    assert round(nt / 1e6, 1) == 6.2


def test_yolov5n_matches_embedded_config(yolov5n_path):
    from sw.checkpoint.load import _find_model_record
    from sw.checkpoint import read_torch_zip

    embedded = _find_model_record(read_torch_zip(yolov5n_path), "yolov5n").state["yaml"]
    ours = builtin_config("yolov5n")
    for key in ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head"):
        assert ours[key] == embedded[key], key


def test_strides_and_output_shape():
    model = YoloModel(builtin_config("yolov7-tiny")).eval()
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 320, 256))
    assert out.shape == (2, 3 * (40 * 32 + 20 * 16 + 10 * 8), 85)


def test_layer_names_are_state_dict_prefixes(yolov5n):
    sd = yolov5n.state_dict()
    for name in yolov5n.conv_layers():
        assert f"{name}.weight" in sd
    assert "model.2.cv1.conv" in yolov5n.conv_layers()


@pytest.mark.parametrize("arg", ["__import__('os').system('true')", "open('/etc/passwd')", "nn.Module()",
                                 "nn.LeakyReLU(__import__('os'))"])
def test_config_strings_are_never_evaluated(arg):
    with pytest.raises(ConfigError):
        parse_arg(arg, {})


def test_config_activation_and_names_parse():
    act = parse_arg("nn.LeakyReLU(0.1)", {})
    assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == 0.1
    assert parse_arg("None", {"None": None}) is None
    assert parse_arg("nearest", {}) == "nearest"


def test_unsupported_module_is_named():
    cfg = builtin_config("yolov5n")
    cfg["head"][0] = [-1, 1, "Focus", [64]]
    with pytest.raises(ConfigError, match="layer 10: unsupported module 'Focus'"):
        YoloModel(cfg)
