"""Stimulus for the co-simulation testbench: layers, their beats, and memory files, packed with numpy.

A :class:`LayerCase` is one quantized conv to push through the RTL: its integer contract, the activation
codes of the dot products to compute (im2col rows at sampled output positions) and the accumulators ``sw``
expects for them. Whatever made the case (a real network on a COCO image, or an edge case built by hand),
the testbench treats them alike.

The memories the testbench preloads with ``$readmemh`` hold, per layer, exactly the bits of
:meth:`sw.intref.stream.StreamFormat.pack`, split in two so that each is stored once:

- weight words: the beat without its activation lanes (code[L], tail[L], addr, last), per output channel
  and beat: the same content as ``hw/build``'s ``weights.hex``;
- activation words: act[L], per sampled position and beat.

The testbench's driver concatenates ``{weight word, activation word}`` into a beat, so the packing order is
unchanged (activations in the low bits). Packing goes through a bit matrix (one column per bit), because a
Python loop per beat is far too slow for a whole model (YOLOv7: ~0.6 M beats of 330 bits at 64 lanes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw.config import PEConfig
from sw.intref.contract import LayerContract
from sw.intref.stream import StreamFormat, StreamLayout

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass
class LayerCase:
    """One layer's dot products to verify: ``columns`` [P, N] activation codes, ``expected`` [P, o] int64."""

    contract: LayerContract
    columns: np.ndarray
    expected: np.ndarray
    positions: list = field(default_factory=list)  # a label per row of ``columns`` for reports, e.g. (image, y, x)

    def __post_init__(self):
        p, n = self.columns.shape
        if n != self.contract.fmt.fan_in or self.expected.shape != (p, self.contract.shape[0]):
            raise ValueError(f"{self.contract.name}: columns {self.columns.shape} and expected "
                             f"{self.expected.shape} do not fit the layer {self.contract.shape}")
        lo, hi = self.contract.fmt.act_range
        if self.columns.size and (self.columns.min() < lo or self.columns.max() > hi):
            raise ValueError(f"{self.contract.name}: activation codes outside [{lo}, {hi}]")
        if not self.positions:
            self.positions = list(range(p))

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def macs(self) -> int:
        """Multiply-accumulates the RTL performs for this case (idle lanes not counted)."""
        return int(self.expected.size) * self.contract.fmt.fan_in


def reference_accumulators(contract: LayerContract, columns: np.ndarray) -> np.ndarray:
    """sum_i W_i x_i for every row of ``columns``: [P, o] int64 (exact: the contract bounds every sum)."""
    w = contract.weight_int().reshape(contract.shape[0], -1).numpy()
    return np.asarray(columns, dtype=np.int64) @ w.T


# ---- bit packing ------------------------------------------------------------------------------------------
def bit_matrix(fields: list[tuple[np.ndarray, int]], rows: int) -> np.ndarray:
    """[rows, width] uint8, column j = bit j of each word; ``fields`` are (values [rows, items], bits), LSB first.

    Values are taken modulo 2^bits (two's complement for negative ones), as :meth:`StreamFormat.pack` does.
    """
    cols = []
    for values, bits in fields:
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
    """The words of a bit matrix as Python integers (for tests and small memories)."""
    return [int("".join(map(str, row[::-1])) or "0", 2) for row in bits]


# ---- one layer's words ------------------------------------------------------------------------------------
def weight_fields(layout: StreamLayout, stream: StreamFormat) -> tuple[list, int]:
    """Fields (LSB first) of every output channel's weight beats: rows = o * beats, channel-major."""
    c = layout.contract
    o, beats, lanes = c.shape[0], layout.beats, layout.lanes
    idx = layout.lane_element
    idle = idx < 0
    gather = np.maximum(idx, 0)
    codes = c.codes.reshape(o, -1).numpy().astype(np.int64)[:, gather]
    fields = [(np.where(idle[None], 0, codes), stream.fmt.weight_bits)]
    if stream.fmt.pwlq:
        tails = c.region.reshape(o, -1).numpy().astype(np.int64)[:, gather]
        fields.append((np.where(idle[None], 0, tails), 1))
    last = np.zeros((o, beats), dtype=np.int64)
    last[:, -1] = 1
    fields += [(layout.beat_addr.astype(np.int64), stream.addr_bits), (last, 1)]
    return fields, o * beats


def act_fields(layout: StreamLayout, stream: StreamFormat, columns: np.ndarray) -> tuple[list, int]:
    """Fields of every sampled position's activation beats: rows = P * beats, position-major."""
    acts = layout.act_beats(np.asarray(columns, dtype=np.int64))  # [P, beats, L]
    return [(acts, stream.fmt.act_bits)], acts.shape[0] * layout.beats


def param_fields(layout: StreamLayout, cfg: PEConfig) -> tuple[list, int]:
    """Fields of the layer's parameter words in ``cfg``'s word layout (group: scale[R], zero-point; lane: per lane).

    Matches :meth:`hw.config.PEConfig.param_init`: the stored zero-point is the tail's (PWLQ) or the only one;
    a wider ``cfg`` (superset PE) sign-extends it, and a layer without zero-points stores 0.
    """
    c = layout.contract
    fmt = cfg.fmt
    scale = c.scale_int.numpy().astype(np.int64)                     # [G, R]
    zp = c.zero_point.numpy().astype(np.int64)[:, 1 if fmt.pwlq else 0]  # [G]
    if layout.mode == "lane":
        slots = layout.param_words * cfg.lanes
        scale = np.concatenate([scale, np.zeros((slots - len(scale), scale.shape[1]), np.int64)])
        zp = np.concatenate([zp, np.zeros(slots - len(zp), np.int64)])
    rows = layout.param_words
    scale = scale.reshape(rows, -1, fmt.regions)                     # [words, groups per word, R]
    zp = zp.reshape(rows, -1, 1)
    per_group = np.concatenate([scale, zp], axis=2) if fmt.zero_point_bits else scale
    widths = [fmt.scale_bits] * fmt.regions + ([fmt.zero_point_bits] if fmt.zero_point_bits else [])
    # interleave per group: scale[0..R-1], zero-point; then the next lane's group
    fields = [(per_group[:, g, f:f + 1], widths[f]) for g in range(per_group.shape[1]) for f in range(len(widths))]
    return fields, rows


def check_fits(layout: StreamLayout, cfg: PEConfig) -> None:
    """A layer runs on ``cfg`` only if every width it needs fits (the superset PE's contract)."""
    f, g = layout.contract.fmt, cfg.fmt
    same = (f.weight_bits, f.pwlq, f.act_bits, f.scale_bits) == (g.weight_bits, g.pwlq, g.act_bits, g.scale_bits)
    if not same or layout.mode != cfg.mode or layout.lanes != cfg.lanes or f.zero_point_bits > g.zero_point_bits \
            or f.acc_bits > g.acc_bits or layout.param_words > cfg.param_words:
        raise ValueError(f"{layout.contract.name} ({f}, {layout.mode}, {layout.param_words} words) does not fit "
                         f"the PE ({g}, {cfg.mode}, {cfg.param_words} words)")
