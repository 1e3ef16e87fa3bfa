"""Shared fixtures. Data comes from $YOLOQ_DATA or ../shared/data; if it is missing, tests that need it
fail (never skip) with a message naming what is missing."""

from __future__ import annotations

import os
from pathlib import Path

from sw.heap import keep_freed_memory
from sw.threads import apply_thread_policy

# Before torch loads: passive OpenMP waiting, and pytest-xdist's workers share the usable CPUs (sw.threads);
# freed memory kept, as every yoloq command does (sw.heap).
apply_thread_policy(share=int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
keep_freed_memory()

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


def made_once(tmp_path_factory, name: str, make) -> Path:
    """``make(path)`` run once per test run, not once per xdist worker: the file ``name`` in the folder the
    workers' temporary folders share, made by the first worker that asks for it, under a file lock that the
    others wait on and then read the file (pytest-xdist's recipe). ``make`` writes atomically (sw.atomic), so a
    worker that failed halfway leaves no file for the others to take."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # pytest-of-USER/pytest-N: one per run, shared by its workers
    path = root / name
    with FileLock(f"{path}.lock"):
        if not path.exists():
            make(path)
    return path


@pytest.fixture(scope="session")
def yolov7_generated_path(tmp_path_factory) -> Path:
    """An official-format yolov7.pt (training form, as released) with generated weights."""

    def make(path):
        from sw.checkpoint.official import generate_weights, write_official_checkpoint
        from sw.eval.coco_classes import NAMES
        from sw.models import YoloModel, builtin_config

        model = generate_weights(YoloModel(builtin_config("yolov7-training"), names=NAMES), seed=0)
        write_official_checkpoint(model, path)

    return made_once(tmp_path_factory, "yolov7-generated.pt", make)


@pytest.fixture(scope="session")
def yolov7_pwlq_mix3(yolov7_generated_path, tmp_path_factory) -> Path:
    """4-bit PWLQ mix3 quantized artifact of the generated YOLOv7 (real YOLOv7 layer shapes)."""

    def make(path):
        from sw.checkpoint import load_model
        from sw.checkpoint.artifact import save_quantized
        from sw.quant.model import QuantSpec, quantize_model

        qm = quantize_model(load_model(yolov7_generated_path).model, QuantSpec("pwlq", 4, "mix3"), progress=False)
        save_quantized(qm, path)

    return made_once(tmp_path_factory, "yolov7-pwlq4-mix3.yqa", make)


# `make test` runs the suite on two xdist workers that each take the next test as they finish one (the Makefile's
# --dist loadgroup). A minutes-long test that starts last leaves the other worker idle for its whole length, so
# the longest tests go first, roughly longest first (as `pytest --durations` measured them), then the other slow
# tests, then the fast ones, each in collection order; the short tests fill in at the end and the workers finish
# together. A name here that no longer matches only loses its place in the queue.
LONGEST_FIRST = (
    "tests/test_sim_featuremap.py::test_every_yolov7_layer_at_a_position_in_verilator",
    "tests/test_sweep.py::test_ray_sweep_runs_every_configuration",
    "tests/test_sweep.py::test_killed_and_resumed_local_sweep",
    "tests/test_sim_featuremap.py::test_yolov5n_feature_maps_every_position_in_verilator",
    "tests/test_sim_cosim.py::test_representative_subset",
    "tests/test_hw_synth.py::test_layer_unit_places_and_routes",
    "tests/test_sim_cosim.py::test_every_code_width_granularity_mix_and_pwlq_region",
    "tests/test_eval.py::test_yolov5n_coco_subset_acceptance",
    "tests/test_hw_synth.py::test_synthesis_only_targets",
    "tests/test_sim_cosim.py::test_adversarial_corner_at_the_accumulator_bound_exact_width",
    "tests/test_sim_cosim.py::test_real_layers_on_exact_width_pes",
    "tests/test_hw_build.py::test_one_module_per_kind_of_layer",
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
    if getattr(config.option, "loadgroup", False):  # an xdist worker of `make test` (--dist loadgroup)
        _group_by_xdist_group_mark(items)


def _group_by_xdist_group_mark(items):
    """What pytest-xdist's worker does for ``--dist loadgroup``: a test marked ``xdist_group(NAME)`` gets the
    node id ``<id>@NAME``, by which the scheduler sends the group to one worker. xdist 3.8 writes the id into
    ``item._nodeid``, which pytest 9's structured node ids no longer read (pytest-dev/pytest-xdist#1386): the
    groups were silently ignored, and each worker made the group's shared fixtures again. Done here on either
    kind of id; a pytest on which neither takes effect is an error, not a silent return to no groups."""
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if not names or item.nodeid.endswith("@" + "_".join(names)):  # none, or xdist did it
            continue
        grouped = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):  # pytest >= 9
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(grouped)
        else:
            item._nodeid = grouped
        if item.nodeid != grouped:
            raise pytest.UsageError(f"cannot give {item.nodeid} its xdist group: this pytest's node ids are new to "
                                    "tests/conftest.py")


def require_built(kernel) -> None:
    """For tests of a compiled kernel (:class:`sw.ckernel.CompiledKernel`): it must have built. A C compiler is
    part of the set-up (`make setup` installs g++, which every Verilator build needs too), so a missing one fails
    here, naming it, as missing data does; the fallback path has tests of its own (``kernel.disabled()``)."""
    from sw import ckernel

    assert ckernel.compiler() is not None, (f"no C compiler ({os.environ.get('CC', 'cc')}) for {kernel.what}: "
                                            "`make setup` installs g++")
    assert kernel.available(), f"{kernel.what} did not build with {ckernel.compiler()}"


@pytest.fixture
def pwlq_kernel_built():
    from sw.quant import pwlq_kernel

    require_built(pwlq_kernel.KERNEL)


@pytest.fixture
def fused_built():
    from sw.intref import fused

    require_built(fused.KERNEL)


@pytest.fixture
def coco_match_built():
    from sw.eval import coco_match

    require_built(coco_match.KERNEL)


@pytest.fixture
def nms_built():
    from sw.eval import nms

    require_built(nms.KERNEL)
