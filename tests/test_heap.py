"""sw.heap.keep_freed_memory: a large block freed and allocated again reuses the same pages (no fresh page
faults), which is what makes the demo's evaluation loop cheaper; results are untouched by construction."""

import os
import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from sw.heap import keep_freed_memory
    assert keep_freed_memory()
np.ones(1 << 23)  # 64 MiB: above glibc's largest mmap threshold
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    np.ones(1 << 23)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    from sw.heap import ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}  # glibc's defaults (conftest exported ours)
    done = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    default, keep = faults("default"), faults("keep")
    assert default > 100           # each 64 MiB block mapped afresh: faults on the pages it touches
    assert keep < min(64, default // 10)  # the freed block's pages are reused as they are


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_every_command_and_its_children_keep_freed_memory():
    """The CLI applies the policy (as it does the thread policy) and exports it: a process it starts reuses a
    freed block too; a setting of the user's own is kept."""
    from sw.heap import ENVIRONMENT

    base = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT and k != "GLIBC_TUNABLES"}
    child = ("import sw.cli, os, subprocess, sys; "
             f"print(subprocess.run([sys.executable, '-c', {PROBE!r}, 'default'], capture_output=True, text=True,"
             " check=True).stdout.strip(), os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    faults_in_child, trim = subprocess.run([sys.executable, "-c", child], env=base, capture_output=True, text=True,
                                           check=True).stdout.split()
    assert int(faults_in_child) < 64 and trim == ENVIRONMENT["MALLOC_TRIM_THRESHOLD_"]
    mine = dict(base, MALLOC_TRIM_THRESHOLD_="131072")
    kept = subprocess.run([sys.executable, "-c", "import sw.cli, os; print(os.environ['MALLOC_TRIM_THRESHOLD_'],"
                           " os.environ.get('MALLOC_MMAP_MAX_'))"], env=mine, capture_output=True, text=True,
                          check=True).stdout.split()
    assert kept == ["131072", "None"]
