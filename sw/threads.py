"""The CPU thread policy of every yoloq process, owned here and applied by each entry point before torch starts.

Why: torch's OpenMP runtime spin-waits for work between parallel regions. Two torch processes spinning
against each other on the same cores (a second yoloq command, pytest-xdist's other worker, a sweep or demo
worker) make both many times slower (quantize: 3.8 s alone, 84 s beside one such process). Two rules fix it
without costing idle speed:

- ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep instead of spinning. OpenMP reads it once, when the
  runtime loads, so it must be in the environment before ``import torch``.
- threads = the CPUs this process really gets: its affinity mask and, in a container, its cgroup CPU quota
  (``os.cpu_count()`` and torch's default see the whole machine). On an unrestricted machine torch's own
  default (one thread per physical core) is kept.

Both go into the environment, so every child process (spawned pool workers, Ray workers started from here)
inherits them. A value the user already set is kept.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs allowed by the cgroup's quota (rounded up), or None when there is no quota."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: quota -1 means none
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may really use: its affinity (which a container or taskset may narrow), capped by a
    cgroup CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def export_wait_policy() -> dict[str, str]:
    """Put the passive wait policy into this process's environment (unless set), so that processes started from
    here inherit it; returned too, for launchers whose workers do not inherit it (Ray on a cluster)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {"OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}


def apply_thread_policy(share: int = 1) -> int:
    """Set the policy for this process and its children; ``share`` processes split the usable CPUs (e.g.
    pytest-xdist workers). Returns the thread count set, 0 where torch's default is kept (the whole machine).

    Call it before ``import torch`` for the wait policy to take effect; if torch is already loaded, only the
    thread count is applied (the wait policy then reaches the child processes).
    """
    export_wait_policy()
    threads = max(1, usable_cpus() // max(1, share))
    if "OMP_NUM_THREADS" in os.environ:  # the user's choice wins
        try:
            threads = max(1, int(os.environ["OMP_NUM_THREADS"].split(",")[0]))
        except ValueError:
            pass
    elif threads < (os.cpu_count() or threads):
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        threads = 0  # the whole machine: torch's default
    torch = sys.modules.get("torch")
    if torch is not None and threads:
        torch.set_num_threads(threads)
    return threads
