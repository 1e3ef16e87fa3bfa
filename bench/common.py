"""Helpers shared by the benchmarks: timing and ratio tables. Benchmarks print; they never assert on time.

Imported first by every benchmark: it applies yoloq's thread policy (sw.threads) before torch loads, as
every entry point does, and the heap policy (sw.heap), so benchmarks measure what users get.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's sw, hw, sim

from sw.heap import keep_freed_memory  # noqa: E402
from sw.threads import apply_thread_policy  # noqa: E402

apply_thread_policy()
keep_freed_memory()


def best_of(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, in seconds (the least noisy estimate on a shared 2-core box)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
