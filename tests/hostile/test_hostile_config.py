"""Hostile model configs embedded in a checkpoint: each value is checked against its limit (sw.limits), and
the config is built and run on the meta device before anything real is allocated."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from hostile_harness import run_cli
from hostile_payloads import config_only, official, tiny_model
from sw.checkpoint import load_model
from sw.models import builtin_config


# The tests that read this module's expensive fixture (a subprocess that imports torch and runs the CLI case after
# case: tens of seconds) are one xdist group: `make test` (--dist loadgroup) runs them on one worker, which makes
# the fixture once instead of once on each worker.
ONE_WORKER = pytest.mark.xdist_group("hostile_config")


def _v5n(**top):
    cfg = builtin_config("yolov5n")
    cfg.update(top)
    return cfg


def _row(index: int, position: int, value):
    """yolov5n with field ``position`` (0 from, 1 number, 2 module, 3 args) of layer ``index`` replaced."""
    cfg = builtin_config("yolov5n")
    rows = cfg["backbone"] + cfg["head"]
    row = copy.deepcopy(rows[index])
    row[position] = value
    part, i = ("backbone", index) if index < len(cfg["backbone"]) else ("head", index - len(cfg["backbone"]))
    cfg[part][i] = row
    return cfg


def _layer(cfg, index):
    return (cfg["backbone"] + cfg["head"])[index]


UPSAMPLE = next(i for i, r in enumerate(builtin_config("yolov5n")["backbone"] + builtin_config("yolov5n")["head"])
                if r[2] == "nn.Upsample")
CONCAT = next(i for i, r in enumerate(builtin_config("yolov5n")["backbone"] + builtin_config("yolov5n")["head"])
              if r[2] == "Concat")
SPPF = next(i for i, r in enumerate(builtin_config("yolov5n")["backbone"]) if r[2] == "SPPF")
C3 = next(i for i, r in enumerate(builtin_config("yolov5n")["backbone"]) if r[2] == "C3")
_TALL = {"nc": 1, "anchors": [[10, 13, 16, 30]],
         "backbone": [[-1, 1, "Conv", [16, 3, 1]], [-1, 1, "nn.Upsample", [None, 16, "nearest"]],
                      [-1, 1, "nn.Upsample", [None, 16, "nearest"]]],
         "head": [[[-1], 1, "Detect", ["nc", "anchors"]]]}

CASES = {  # name: (config, regex of the error line)
    "nc = 10^9": (_v5n(nc=10 ** 9), r"nc must be an integer from 1 to 10000"),
    "nc = '80'": (_v5n(nc="80"), r"nc must be an integer from 1 to 10000, got '80'"),
    "nc = -100": (_v5n(nc=-100), r"nc must be an integer"),
    "depth_multiple = 1e7": (_v5n(depth_multiple=1e7), r"depth_multiple must be a finite number in \(0, 16\]"),
    "depth_multiple = NaN": (_v5n(depth_multiple=math.nan), r"depth_multiple must be a finite number"),
    "width_multiple = inf": (_v5n(width_multiple=math.inf), r"width_multiple must be a finite number"),
    "width_multiple = 1e4": (_v5n(width_multiple=1e4), r"width_multiple must be a finite number"),
    "width_multiple = 8 (billions of weights)": (_v5n(width_multiple=8.0), r"channels, more than 8192|parameters, more than"),
    "n = 10^9": (_row(C3, 1, 10 ** 9), r"number must be an integer from 1 to 64"),
    "n = '3'": (_row(C3, 1, "3"), r"number must be an integer from 1 to 64, got '3'"),
    "module name is a list": (_row(0, 2, ["Conv"]), r"unsupported module <list>"),
    "Upsample x 10^4": (_row(UPSAMPLE, 3, [None, 10 ** 4, "nearest"]), r"nn.Upsample takes \[None, scale\]"),
    "Upsample x 16 twice (activation bomb)": (_TALL, r"output larger than 67108864 elements"),
    "from = 0 on layer 0": (_row(0, 0, 0), r"layer 0: 'from' index 0 does not name an earlier layer"),
    "from names a later layer": (_row(CONCAT, 0, [-1, 40]), r"'from' index 40 does not name an earlier layer"),
    "empty anchors": (_v5n(anchors=[]), r"anchors must be 1 to 8 levels"),
    "NaN anchor": (_v5n(anchors=[[10, math.nan, 16, 30, 33, 23]] * 3), r"anchors must be"),
    "no layers": (_v5n(backbone=[], head=[]), r"backbone and head must be lists of 1 to 1000 layers"),
    "Concat dimension 7": (_row(CONCAT, 3, [7]), r"Concat joins channels \(dimension 1\), got 7"),
    "MaxPool kernel 0 (SPPF k=0)": (_row(SPPF, 3, [1024, 0]), rf"layer {SPPF}: cannot run"),
    "10^6 output channels": (_row(0, 3, [10 ** 6, 6, 2, 2]), r"output channels, more than 8192"),
    "no Detect at the end": (_v5n(head=builtin_config("yolov5n")["head"][:-1]), r"must be Detect or IDetect"),
    "config is a list": ([1, 2, 3], r"model config must be a dict"),
    "Detect with 10^9 anchors": (_row(len(builtin_config("yolov5n")["backbone"] + builtin_config("yolov5n")["head"]) - 1,
                                      3, ["nc", 10 ** 9]), r"Detect anchors must be from 1 to 16"),
    "activation with a keyword it does not take": (_row(0, 3, [16, 6, 2, 2, 1, "nn.LeakyReLU(foo=1)"]),
                                                   r"activation arguments must be literals it accepts"),
    "a 100000-character argument": (_row(0, 3, [16, 6, 2, 2, 1, "(" * 50_000 + ")" * 50_000]),
                                    r"config argument of 100000 characters"),
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_cfg")
    cwd = tmp_path_factory.mktemp("cwd")
    paths = {name: config_only(tmp / f"cfg{i}.pt", cfg) for i, (name, (cfg, _)) in enumerate(CASES.items())}
    results = run_cli([(["eval", "--weights", paths[name], "--quiet"], cwd) for name in CASES])
    assert not list(cwd.iterdir())
    return {name: (paths[name], r) for name, r in zip(CASES, results)}


@ONE_WORKER
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_config_refused_cleanly(outcomes, name):
    path, outcome = outcomes[name]
    outcome.assert_refused(r"embedded config: .*" + CASES[name][1], names=str(path))


@pytest.mark.slow
def test_unsortable_or_wrong_names_fall_back_to_numbers(tmp_path):
    """Class names that are not nc strings (mixed-type keys, wrong count) are replaced by numbers, not a crash."""
    model = tiny_model(nc=2)
    for i, names in enumerate(({1: "a", "b": "c"}, ["only one"], "person")):
        path = official(tmp_path / f"n{i}.pt", model, lambda ckpt, n=names: ckpt["model"].__dict__.update(names=n))
        assert load_model(path).model.names == ["0", "1"]


def test_plain_state_dict_of_another_network_is_turned_down_without_building(tmp_path, monkeypatch):
    """The state_dict has 4 layers; no built-in model has, so none is built to compare (was 25 s, 630 MB)."""
    import sw.checkpoint.load as load

    built = []
    monkeypatch.setattr(load, "build_for_state_dict", lambda *a, **k: built.append(a) or None)
    sd = {f"model.{i}.conv.weight": torch.zeros(1) for i in range(4)}
    assert load.infer_builtin(sd) is None and not built
    assert load.infer_builtin({"fc.weight": torch.zeros(1)}) is None and not built
    assert load.infer_builtin({"model." + "9" * 5000 + ".w": torch.zeros(1)}) is None and not built  # no int()
