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


# `make test` runs the suite on two xdist workers that each take the next test as they finish one (the Makefile's
# --dist loadgroup). A minutes-long test that starts last leaves the other worker idle for its whole length, so
# the longest tests go first, roughly longest first (as `pytest --durations` measured them), then the other slow
# tests, then the fast ones, each in collection order; the short tests fill in at the end and the workers finish
# together. A name here that no longer matches only loses its place in the queue.
LONGEST_FIRST = (
    "tests/test_sim_featuremap.py::test_every_yolov7_layer_at_a_position_in_verilator",
    "tests/test_sweep.py::test_ray_gives_the_same_results_csv_as_local",
    "tests/test_sweep.py::test_kill_and_resume_gives_identical_results",
    "tests/test_sim_featuremap.py::test_yolov5n_feature_maps_every_position_in_verilator",
    "tests/test_sim_cosim.py::test_representative_subset",
    "tests/test_hw_synth.py::test_layer_unit_places_and_routes",
    "tests/test_sim_cosim.py::test_every_code_width_granularity_mix_and_pwlq_region",
    "tests/test_eval.py::test_yolov5n_coco_subset_acceptance",
    "tests/test_hw_synth.py::test_synthesis_only_targets",
    "tests/test_sim_cosim.py::test_adversarial_corner_at_the_accumulator_bound_exact_width",
    "tests/test_sim_cosim.py::test_real_layers_on_exact_width_pes",
    "tests/test_hw_build.py::test_one_module_per_kind_of_layer",
    "tests/test_pwlq_reference.py::test_yoloq_pwlq_is_no_worse_than_the_authors",
    "tests/test_sweep.py::test_failed_config_is_recorded_and_rerun_recomputes_only_it",
)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping by fixture scope, which would undo the order
def pytest_collection_modifyitems(config, items):
    def place(item):
        for rank, prefix in enumerate(LONGEST_FIRST):
            if item.nodeid.startswith(prefix):
                return rank
        return len(LONGEST_FIRST) + (0 if item.get_closest_marker("slow") else 1)

    items.sort(key=place)  # stable: collection order within each place


@pytest.fixture
def pwlq_kernel_built():
    """For tests of the compiled PWLQ kernel: skipped where no C compiler exists (the torch path is then the
    only one, and its own tests run); where one exists, a kernel that did not build is a failure, not a skip."""
    from sw.quant import pwlq_kernel

    if pwlq_kernel.compiler() is None:
        pytest.skip("no C compiler: the torch path is the only one")
    assert pwlq_kernel.available(), f"the PWLQ kernel did not build with {pwlq_kernel.compiler()}"
