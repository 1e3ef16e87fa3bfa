"""Bit packing of fixed-width words, with numpy: the one packer behind every beat, parameter word and
``$readmemh`` file (``sw.intref.stream``, ``hw.build``, ``sim``).

A word is a list of fields, LSB first (:class:`Field`); packing goes through a bit matrix (one column per
bit), because a Python loop per word is far too slow for a whole model (YOLOv7: ~0.6 M beats of 330 bits at
64 lanes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True)
class Field:
    """One field of a packed word: ``count`` items of ``bits`` bits each (``count=None``: a single value).

    ``signed`` says how the hardware reads the bits (two's complement or not); packing takes every value
    modulo 2^bits either way. ``source`` names where a beat field's values come from (``"weights"``: per
    output channel, ``"acts"``: per output position); parameter-word fields leave it empty.
    """

    name: str
    bits: int
    signed: bool
    count: int | None = None
    source: str = ""

    @property
    def items(self) -> int:
        return 1 if self.count is None else self.count

    @property
    def width(self) -> int:
        return self.bits * self.items


def field_columns(fields, values: dict, rows: int) -> list[tuple[np.ndarray, int]]:
    """(values [rows, items], bits) of each field in packing order, from ``values[field.name]``."""
    return [(np.asarray(values[f.name], dtype=np.int64).reshape(rows, f.items), f.bits) for f in fields]


def bit_matrix(columns: list[tuple[np.ndarray, int]], rows: int) -> np.ndarray:
    """[rows, width] uint8, column j = bit j of each word; ``columns`` are (values [rows, items], bits), LSB first.

    Values are taken modulo 2^bits (two's complement for negative ones).
    """
    cols = []
    for values, bits in columns:
        if bits == 0:
            continue
        v = np.asarray(values, dtype=np.int64).reshape(rows, -1)
        shifts = np.arange(bits, dtype=np.int64)
        cols.append(((v[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(rows, -1))
    return np.concatenate(cols, axis=1) if cols else np.zeros((rows, 0), dtype=np.uint8)


def hex_lines(bits: np.ndarray) -> bytes:
    """``$readmemh`` text of a bit matrix: one word per line, MSB first, ceil(width / 4) digits."""
    rows, width = bits.shape
    digits = max(1, -(-width // 4))
    padded = np.zeros((rows, digits * 4), dtype=np.uint8)
    padded[:, :width] = bits
    nibbles = padded.reshape(rows, digits, 4) @ np.array([1, 2, 4, 8], dtype=np.uint8)
    chars = np.empty((rows, digits + 1), dtype=np.uint8)
    chars[:, :digits] = _HEX[nibbles[:, ::-1]]
    chars[:, digits] = ord("\n")
    return chars.tobytes()


def words_of(bits: np.ndarray) -> list[int]:
    """The words of a bit matrix as Python integers."""
    return [int("".join(map(str, row[::-1])) or "0", 2) for row in bits]
