"""Pipelined integer arithmetic for the processing element, in plain LUT logic.

FPGA flows infer DSP multipliers without their internal registers (Yosys on ECP5 does), and an unregistered
DSP plus routing costs more than a 200 MHz cycle. Shift-add multipliers and adder trees with a register
after every ``levels`` adder levels put the pipeline registers where the design wants them, on any FPGA,
and simulate identically everywhere.

Each builder returns the (unregistered) result and the number of register stages inside it; the pure
functions ``*_stages`` give the same counts without building anything, for latency bookkeeping.
"""

from __future__ import annotations

from amaranth import Mux, Shape, Value


def tree_levels(n: int) -> int:
    return (n - 1).bit_length()


def tree_stages(n: int, levels: int) -> int:
    """Registers inside an adder tree of ``n`` terms with a register after every ``levels`` levels."""
    return max(0, -(-tree_levels(n) // levels) - 1)


def add_tree(reg, values: list, name: str, levels: int):
    """Sum of ``values`` as a balanced tree; ``reg(value, name)`` inserts a pipeline register."""
    level, stages = 0, 0
    while len(values) > 1:
        pairs = [values[i] + values[i + 1] for i in range(0, len(values) - 1, 2)]
        values = pairs + ([values[-1]] if len(values) % 2 else [])
        level += 1
        if level % levels == 0 and len(values) > 1:
            values = [reg(v, f"{name}_l{level}_{i}") for i, v in enumerate(values)]
            stages += 1
    return values[0], stages


def multiply_stages(b_width: int, levels: int) -> int:
    """Registers inside :func:`multiply`: the partial products, then the adder tree's own."""
    return 1 + tree_stages(b_width, levels)


def multiply(reg, a, b, name: str, levels: int):
    """``a * b`` as registered partial products of ``a`` by each bit of ``b``, summed by an adder tree.

    ``b`` should be the narrower operand: it sets the number of partial products. A signed ``b``'s top bit
    weighs -2^(n-1). Returns (product, register stages).
    """
    b = Value.cast(b)
    shape = Shape.cast(b.shape())
    partials = []
    for i in range(shape.width):
        term = Mux(b[i], a, 0) << i
        if shape.signed and i == shape.width - 1:
            term = -term
        partials.append(reg(term, f"{name}_pp{i}"))
    product, stages = add_tree(reg, partials, name, levels)
    return product, 1 + stages
