"""sw.heap.keep_freed_memory: a large block freed and allocated again reuses the same pages (no fresh page
faults), which is what makes the demo's evaluation loop cheaper; results are untouched by construction."""

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
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_are_reused_without_page_faults():
    default, keep = faults("default"), faults("keep")
    assert default > 100           # each 64 MiB block mapped afresh: faults on the pages it touches
    assert keep < min(64, default // 10)  # the freed block's pages are reused as they are
