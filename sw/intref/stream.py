"""The stream of dot-product elements exactly as the processing element (PE) sees it.

A dot product (one output channel at one output position) has N = c * kh * kw elements. The PE takes them L
at a time, one *beat* per cycle. Every beat carries, per lane, an activation code, a weight code and (PWLQ) a
region bit, plus a parameter address and an end-of-dot-product flag. Two addressing modes:

- ``group`` (layer, filter, channel, C-shape): all lanes of a beat belong to one group. Elements are ordered
  so that each group's elements are contiguous (e.g. C-shape: kh, kw outer, c inner) and each group's run is
  padded to whole beats with idle lanes (activation 0, code 0). The PE scales a beat's lane sum once.
- ``lane`` (F-shape): every element is its own group (one per (c, kh, kw), shared by all filters), so lane l
  of beat b uses group b * L + l; the parameter memory holds L groups per word, addressed by b.

The layout (which element sits in which lane of which beat) depends only on the layer's shape, granularity
and L, never on the output channel or position, so activations can be laid out once per position and weights
once per output channel. :func:`pe_accumulate` models the PE's beat-level arithmetic; it must equal the
integer conv (:func:`~sw.intref.conv.integer_conv2d`) exactly, whatever the lane count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .contract import ContractFormat, LayerContract

MODES = ("group", "lane")


def mode_for(granularity: str) -> str:
    return "lane" if granularity == "fshape" else "group"


def bits_for(n: int) -> int:
    """Unsigned bits to address ``n`` items (at least 1)."""
    return max(1, (n - 1).bit_length())


@dataclass(frozen=True)
class StreamFormat:
    """Bit layout of one beat, LSB first: act[L], code[L], tail[L] (PWLQ only), addr, last."""

    fmt: ContractFormat
    lanes: int
    addr_bits: int
    mode: str

    @property
    def fields(self) -> list[tuple[str, int, int]]:
        """(name, bits per item, items) in packing order."""
        f, lanes = self.fmt, self.lanes
        fields = [("act", f.act_bits, lanes), ("code", f.weight_bits, lanes)]
        if f.pwlq:
            fields.append(("tail", 1, lanes))
        return fields + [("addr", self.addr_bits, 1), ("last", 1, 1)]

    @property
    def width(self) -> int:
        return sum(bits * n for _, bits, n in self.fields)

    def pack(self, beats: dict[str, np.ndarray]) -> list[int]:
        """Pack arrays (leading dim = beat; lane fields [beats, L]) into one integer per beat."""
        n = len(beats["last"])
        words = [0] * n
        offset = 0
        for name, bits, items in self.fields:
            values = np.asarray(beats[name]).reshape(n, items).astype(np.int64) & ((1 << bits) - 1)
            for item in range(items):
                col = values[:, item].tolist()
                for i in range(n):
                    words[i] |= col[i] << offset
                offset += bits
        return words


@dataclass
class StreamLayout:
    """Beats of one layer's dot products for a PE with ``lanes`` lanes."""

    contract: LayerContract
    lanes: int
    mode: str
    lane_element: np.ndarray   # [beats, L] element index (into c*kh*kw, row-major), -1 = idle lane
    beat_addr: np.ndarray      # [o, beats] parameter memory address of each beat
    param_words: int           # parameter memory depth

    @classmethod
    def build(cls, contract: LayerContract, lanes: int, mode: str | None = None) -> "StreamLayout":
        mode = mode or mode_for(contract.granularity)
        if mode not in MODES or lanes < 1:
            raise ValueError(f"bad stream mode {mode!r} or lanes {lanes}")
        o = contract.shape[0]
        n = contract.fmt.fan_in
        gid = contract.group_ids.reshape(o, n).numpy()
        if mode == "lane":
            if not (gid == np.arange(n)[None, :]).all():
                raise ValueError(f"{contract.name}: lane addressing needs one group per element (F-shape)")
            beats = -(-n // lanes)
            elems = np.arange(beats * lanes).reshape(beats, lanes)
            lane_element = np.where(elems < n, elems, -1)
            return cls(contract, lanes, mode, lane_element, np.tile(np.arange(beats), (o, 1)), beats)
        order = np.argsort(gid[0], kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(gid[0][order]) != 0])
        boundaries = np.r_[True, (np.diff(gid[:, order], axis=1) != 0).any(0)]
        if not np.array_equal(np.flatnonzero(boundaries), starts):
            raise ValueError(f"{contract.name}: groups do not form the same runs in every filter")
        ends = np.r_[starts[1:], n]
        rows, run_first = [], []
        for start, end in zip(starts, ends):
            for b in range(start, end, lanes):
                lane_elems = order[b:min(b + lanes, end)]
                rows.append(np.r_[lane_elems, [-1] * (lanes - len(lane_elems))])
                run_first.append(order[start])
        lane_element = np.array(rows, dtype=np.int64)
        beat_addr = gid[:, np.array(run_first)]
        return cls(contract, lanes, mode, lane_element, beat_addr, contract.num_groups)

    @property
    def beats(self) -> int:
        return self.lane_element.shape[0]

    @property
    def utilisation(self) -> float:
        """Fraction of lane slots that carry an element."""
        return float((self.lane_element >= 0).mean())

    def stream_format(self) -> StreamFormat:
        return StreamFormat(self.contract.fmt, self.lanes, bits_for(self.param_words), self.mode)

    def weight_beats(self, out_channel: int) -> dict[str, np.ndarray]:
        """Per-beat code, tail bit, address and last flag for one output channel."""
        idx = self.lane_element
        idle = idx < 0
        flat_codes = self.contract.codes.reshape(self.contract.shape[0], -1)[out_channel].numpy().astype(np.int64)
        codes = np.where(idle, 0, flat_codes[np.maximum(idx, 0)])
        beats = {"code": codes, "addr": self.beat_addr[out_channel], "last": np.r_[[0] * (self.beats - 1), 1]}
        if self.contract.fmt.pwlq:
            flat_tail = self.contract.region.reshape(self.contract.shape[0], -1)[out_channel].numpy()
            beats["tail"] = np.where(idle, 0, flat_tail[np.maximum(idx, 0)]).astype(np.int64)
        return beats

    def act_beats(self, columns: np.ndarray) -> np.ndarray:
        """Activation codes per beat and lane, [..., beats, L], from im2col columns [..., N] (idle lanes: 0)."""
        idx = self.lane_element
        return np.where(idx < 0, 0, np.take(columns, np.maximum(idx, 0), axis=-1))

    def param_memory(self) -> list[dict]:
        """Parameter memory contents: per word, scale and zero-point of each region and (PWLQ) the breakpoint,
        for one group (group mode) or each lane's group (lane mode)."""
        c = self.contract
        s, z = c.scale_int.tolist(), c.zero_point.tolist()
        b = c.breakpoint.tolist() if c.fmt.pwlq else [0] * len(s)
        if self.mode == "group":
            return [{"scale": s[g], "zero_point": z[g], "breakpoint": b[g]} for g in range(self.param_words)]
        words = []
        for w in range(self.param_words):
            groups = [w * self.lanes + lane for lane in range(self.lanes)]
            words.append({"scale": [s[g] if g < len(s) else [0] * len(s[0]) for g in groups],
                          "zero_point": [z[g] if g < len(z) else [0] * len(z[0]) for g in groups],
                          "breakpoint": [b[g] if g < len(b) else 0 for g in groups]})
        return words


def im2col(x_int: torch.Tensor, contract: LayerContract, stride: int, padding: int, pad_code: int) -> np.ndarray:
    """Activation codes of every dot product: [n, positions, N] (row-major c, kh, kw), padding = ``pad_code``."""
    _, c, kh, kw = contract.shape
    x = torch.nn.functional.pad(x_int.double(), [padding] * 4, value=float(pad_code)) if padding else x_int.double()
    cols = torch.nn.functional.unfold(x, (kh, kw), stride=stride)  # [n, N, positions]
    return cols.transpose(1, 2).numpy().astype(np.int64)


def _split(code: np.ndarray, tail: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sign, u): a tail code's top bit and low k-1 bits (j, unsigned); (+1, code) elsewhere."""
    if tail is None:
        return np.ones_like(code), code
    negative = (code < 0) & (tail == 1)
    return np.where(negative, -1, 1), np.where(tail == 1, np.mod(code, 1 << (k - 1)), code)


def pe_accumulate(layout: StreamLayout, out_channel: int, acts: np.ndarray) -> np.ndarray:
    """The PE's accumulators for ``acts`` [positions, beats, L] of one output channel, by beat arithmetic.

    Group mode: per beat and region r, P_r = sum sgn u x and X_r = sum sgn x over the lanes in r, then
    acc += S_r (P_r - z_r X_r) + B_r X_r (B: PWLQ tails' breakpoint, else 0). Lane mode: the same per lane,
    then summed. int64 throughout.
    """
    c = layout.contract
    wb = layout.weight_beats(out_channel)
    tail = wb.get("tail")
    sign, u = _split(wb["code"], tail, c.fmt.weight_bits)
    region = np.zeros_like(u) if tail is None else tail
    scale, zp = c.scale_int.numpy(), c.zero_point.numpy()
    offset = np.zeros_like(scale)                      # B per group and region
    if c.fmt.pwlq:
        offset[:, 1] = c.breakpoint.numpy()
    prod = sign[None] * u[None] * acts                 # [P, beats, L]
    xs = sign[None] * acts
    if layout.mode == "group":
        addr = wb["addr"]
        acc = np.zeros(acts.shape[0], dtype=np.int64)
        for r in range(c.fmt.regions):
            in_r = (region == r)[None]
            p_r = (prod * in_r).sum(-1)                 # [P, beats]
            x_r = (xs * in_r).sum(-1)
            acc += ((p_r - zp[addr, r][None] * x_r) * scale[addr, r][None] + offset[addr, r][None] * x_r).sum(-1)
        return acc
    groups = np.where(layout.lane_element < 0, 0, layout.lane_element)
    s_lane, z_lane, b_lane = scale[groups, region], zp[groups, region], offset[groups, region]
    return ((prod - z_lane[None] * xs) * s_lane[None] + b_lane[None] * xs).sum((-1, -2))
