"""Storage-budgeted allocation: per layer one option (bits, granularity) of least total sensitivity whose
stored bits, summed over the model, stay within a budget.

This is a multiple-choice knapsack. :func:`solve` solves it exactly by dynamic programming over storage: layer
by layer it keeps the Pareto frontier of (total stored bits, total cost) of partial assignments, i.e. for every
reachable storage total the least cost, dropping any partial assignment that another one beats at no more
storage. Storage totals are integers (bits, the project's own accounting), so nothing is discretised or
rounded and the optimum is exact; the frontier never holds more points than distinct reachable storage totals
within the budget. Partial totals that cannot be completed within the budget are pruned early.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import QuantizationError


@dataclass(frozen=True)
class Option:
    """One way to store a layer: its stored bits (integer) and its cost (e.g. a measured sensitivity)."""

    storage_bits: int
    cost: float


@dataclass
class Allocation:
    choices: list[int]     # per layer, the index of the chosen option
    storage_bits: int
    cost: float


def solve(layers: list[list[Option]], budget_bits: int) -> Allocation:
    """The assignment of one option per layer of least total cost with total storage <= ``budget_bits``.

    Ties in cost go to less storage. Raises QuantizationError if even the smallest options exceed the budget.
    """
    if not layers or any(not opts for opts in layers):
        raise QuantizationError("budget allocation needs at least one option for every layer")
    smallest = [min(o.storage_bits for o in opts) for opts in layers]
    rest = np.cumsum([0] + smallest[::-1])[::-1]          # rest[l]: least storage of layers l..end
    if rest[0] > budget_bits:
        raise QuantizationError(f"storage budget of {budget_bits} bits is below the least possible "
                                f"({int(rest[0])} bits with every layer at its smallest option)")
    storage = np.zeros(1, dtype=np.int64)
    cost = np.zeros(1, dtype=np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []         # per layer: (frontier parent, option index)
    for layer, opts in enumerate(layers):
        s_opt = np.array([o.storage_bits for o in opts], dtype=np.int64)
        c_opt = np.array([o.cost for o in opts], dtype=np.float64)
        s = (storage[:, None] + s_opt[None, :]).ravel()
        c = (cost[:, None] + c_opt[None, :]).ravel()
        parent = np.repeat(np.arange(storage.size), s_opt.size)
        option = np.tile(np.arange(s_opt.size), storage.size)
        feasible = s + rest[layer + 1] <= budget_bits
        s, c, parent, option = s[feasible], c[feasible], parent[feasible], option[feasible]
        order = np.lexsort((c, s))                          # by storage, then cost
        s, c, parent, option = s[order], c[order], parent[order], option[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(c)[:-1]])
        keep = c < best_before                              # strictly better than anything no larger
        storage, cost = s[keep], c[keep]
        back.append((parent[keep], option[keep]))
    best = int(np.argmin(cost))                             # the first of equal minima: least storage
    total_storage, total_cost = int(storage[best]), float(cost[best])
    choices = []
    for parent, option in reversed(back):
        choices.append(int(option[best]))
        best = int(parent[best])
    return Allocation(choices[::-1], total_storage, total_cost)
