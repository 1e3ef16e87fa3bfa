"""Testbench pieces shared by the Amaranth simulation tests (tests/test_hw_*.py)."""

from __future__ import annotations


async def cycles_until(ctx, valid, limit: int) -> int | None:
    """Clock cycles, counted from 1, until ``valid`` is high (at most ``limit - 1``); None if it never rises:
    a latency measured from the cycle after the last input."""
    for cycle in range(1, limit):
        if ctx.get(valid):
            return cycle
        await ctx.tick()
    return None
