"""Keep freed memory in the process, for a process whose work is a loop of large tensor allocations.

Why: glibc's malloc gives every block above its mmap threshold (32 MiB at most) its own mapping and unmaps it
on free. A forward pass at 640 px allocates activations of tens of MiB in every layer, so each batch maps
fresh pages again and the kernel zero-fills every page on first touch: the demo's four evaluations on 206
images took over a million page faults per 48 images and a sixth of their CPU time in the kernel. Served from
the heap and kept there (not trimmed back to the kernel), a freed block is reused by the next batch as it is.
Arithmetic does not depend on where a tensor lives: the results are the same.

Applied by every entry point beside the thread policy (the CLI, the benchmarks), and exported to the
environment, where glibc reads it when a child process starts (pool, sweep and Ray workers). A setting the user
already made (``MALLOC_MMAP_MAX_``/``MALLOC_TRIM_THRESHOLD_``, or malloc tunables in ``GLIBC_TUNABLES``) wins.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap is returned to the kernel only above 1 GiB
ENVIRONMENT = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}


def user_malloc_settings() -> bool:
    """Whether the environment already tunes glibc's malloc (the user's choice, kept)."""
    return any(k in os.environ for k in ENVIRONMENT) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def heap_policy() -> dict[str, str]:
    """The malloc settings this process exports (ours, or the user's own), for launchers whose workers do not
    inherit the environment (Ray on a cluster)."""
    return {k: os.environ[k] for k in ENVIRONMENT if k in os.environ}


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap (no per-block mappings) and to keep freed memory
    up to :data:`TRIM_THRESHOLD`: for this process from now on, and (through the environment) for the processes
    it starts. Returns whether it took effect here (False where the C library is not glibc, or where the user's
    own malloc settings are kept)."""
    if user_malloc_settings():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols: libc's, without a library search
    except (OSError, AttributeError):
        return False
    os.environ.update(ENVIRONMENT)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
