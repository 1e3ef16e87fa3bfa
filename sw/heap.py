"""Keep freed memory in the process, for a process whose work is a loop of large tensor allocations.

Why: glibc's malloc gives every block above its mmap threshold (32 MiB at most) its own mapping and unmaps it
on free. A forward pass at 640 px allocates activations of tens of MiB in every layer, so each batch maps
fresh pages again and the kernel zero-fills every page on first touch: the demo's four evaluations on 206
images took over a million page faults per 48 images and a sixth of their CPU time in the kernel. Served from
the heap and kept there (not trimmed back to the kernel), a freed block is reused by the next batch as it is.
Arithmetic does not depend on where a tensor lives: the results are the same.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap is returned to the kernel only above 1 GiB


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap (no per-block mappings) and to keep freed memory
    up to :data:`TRIM_THRESHOLD`; for this process, from now on. Returns whether it took effect (False where
    the C library is not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
