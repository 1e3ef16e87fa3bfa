"""What every entry point does before any work: the thread policy (sw.threads) and a parser built without the
heavy libraries. Each check runs in a fresh interpreter, since this one has loaded torch already."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sw.threads import cgroup_cpu_limit

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "amaranth", "matplotlib")


def python(code: str, env: dict | None = None, prefix: list[str] | None = None) -> str:
    """Run ``code`` in a fresh interpreter on this checkout; its stdout."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env = {**base, "PYTHONPATH": str(REPO), **(env or {})}
    out = subprocess.run([*(prefix or []), sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_building_the_parser_and_every_help_loads_no_heavy_library():
    code = f"""
import json, sys
from sw.cli import build_parser
parser = build_parser()
helps = [[]] + [[c] for c in ("eval", "quantize", "sweep", "hw", "generate", "fetch", "demo")]
helps += [["hw", c] for c in ("validate", "build", "formats", "synth", "synth-table", "cosim")]
for words in helps:
    try:
        build_parser().parse_args(words + ["--help"])
    except SystemExit:
        pass
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
"""
    assert json.loads(python(code).splitlines()[-1]) == []


def test_cli_sets_passive_waiting_before_torch_loads():
    code = "import os, sys, sw.cli; print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)"
    assert python(code).split() == ["PASSIVE", "False"]


def test_a_users_own_settings_are_kept():
    code = "import os, sw.cli; print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'])"
    assert python(code, {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1"}).split() == ["ACTIVE", "1"]


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="needs taskset and two CPUs to narrow the affinity")
def test_threads_follow_the_cpus_the_process_really_gets():
    cpu = min(os.sched_getaffinity(0))
    code = "import os, sw.cli, torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())"
    assert python(code, prefix=["taskset", "-c", str(cpu)]).split() == ["1", "1"]


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu.max": "150000 100000\n"}, 2),
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
    ({}, None),
])
def test_cgroup_cpu_quota(tmp_path, files, cpus):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_limit(tmp_path) == cpus
