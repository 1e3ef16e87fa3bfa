"""Shared fixtures. Data comes from $YOLOQ_DATA or ../shared/data; if it is missing, tests that need it
fail (never skip) with a message naming what is missing."""

from __future__ import annotations

import os
from pathlib import Path

from sw.threads import apply_thread_policy

# Before torch loads: passive OpenMP waiting, and pytest-xdist's workers share the usable CPUs (sw.threads).
apply_thread_policy(share=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))

import pytest  # noqa: E402
import torch  # noqa: E402,F401 (loaded here, after the policy, whatever a test module imports first)

from hypothesis import settings  # noqa: E402

from sw.paths import data_file  # noqa: E402

# CI (CI=true, as .ci/run's callers set it) draws the same examples every run, so that a red CI is a
# regression, not a new random draw; elsewhere each run draws afresh and may find new failing cases.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def yolov5n_path() -> Path:
    return data_file("yolov5n/yolov5n.pt")


@pytest.fixture(scope="session")
def coco_root() -> Path:
    return data_file("coco")


@pytest.fixture(scope="session")
def yolov5n(yolov5n_path):
    from sw.checkpoint import load_model

    return load_model(yolov5n_path).model


@pytest.fixture(scope="session")
def yolov7_generated_path(tmp_path_factory) -> Path:
    """An official-format yolov7.pt (training form, as released) with generated weights."""
    from sw.checkpoint.official import generate_weights, write_official_checkpoint
    from sw.eval.coco_classes import NAMES
    from sw.models import YoloModel, builtin_config

    path = tmp_path_factory.mktemp("ckpt") / "yolov7-generated.pt"
    model = generate_weights(YoloModel(builtin_config("yolov7-training"), names=NAMES), seed=0)
    write_official_checkpoint(model, path)
    return path


@pytest.fixture(scope="session")
def yolov7_pwlq_mix3(yolov7_generated_path, tmp_path_factory) -> Path:
    """4-bit PWLQ mix3 quantized artifact of the generated YOLOv7 (real YOLOv7 layer shapes)."""
    from sw.checkpoint import load_model
    from sw.checkpoint.artifact import save_quantized
    from sw.quant.model import QuantSpec, quantize_model

    path = tmp_path_factory.mktemp("q7") / "yolov7-pwlq4-mix3.yqa"
    qm = quantize_model(load_model(yolov7_generated_path).model, QuantSpec("pwlq", 4, "mix3"), progress=False)
    save_quantized(qm, path)
    return path
