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
from enum import Enum

import numpy as np
import torch

from ..quant.pwlq import unpack_tail
from .contract import ContractFormat, LayerContract
from .packing import Field, bit_matrix, field_columns, words_of

class Mode(str, Enum):
    """How a beat addresses the parameter memory: one group per beat, or one group per lane (F-shape).
    A ``str``: equal to, and formatted as, its value ("group", "lane")."""

    GROUP = "group"
    LANE = "lane"

    __str__ = str.__str__
    __format__ = str.__format__


MODES = tuple(Mode)


def mode_for(granularity: str) -> Mode:
    return Mode.LANE if granularity == "fshape" else Mode.GROUP


def bits_for(n: int) -> int:
    """Unsigned bits to address ``n`` items (at least 1)."""
    return max(1, (n - 1).bit_length())


WEIGHTS, ACTS = "weights", "acts"  # where a beat field's values come from: per output channel / per position


@dataclass(frozen=True)
class StreamFormat:
    """Bit layout of one beat, LSB first: act[L], code[L], tail[L] (PWLQ only), addr, last.

    :attr:`fields` is the one definition of the beat: the PE's Amaranth layout (``hw.config``), the packed
    stimulus and ``hw build``'s ``weights.hex`` (:meth:`StreamLayout.weight_fields`), and the testbench's
    beat assembly (``sim.wrapper``) are all derived from it.
    """

    fmt: ContractFormat
    lanes: int
    addr_bits: int
    mode: Mode

    def __post_init__(self):
        object.__setattr__(self, "mode", Mode(self.mode))  # a plain "group"/"lane" is accepted

    @property
    def fields(self) -> tuple[Field, ...]:
        f, lanes = self.fmt, self.lanes
        fields = [Field("act", f.act_bits, True, lanes, ACTS), Field("code", f.weight_bits, True, lanes, WEIGHTS)]
        if f.pwlq:
            fields.append(Field("tail", 1, False, lanes, WEIGHTS))
        return (*fields, Field("addr", self.addr_bits, False, None, WEIGHTS), Field("last", 1, False, None, WEIGHTS))

    def part(self, source: str) -> tuple[Field, ...]:
        """The fields whose values come from ``source`` (WEIGHTS or ACTS), in packing order."""
        return tuple(f for f in self.fields if f.source == source)

    @property
    def width(self) -> int:
        return sum(f.width for f in self.fields)

    @property
    def param_format(self) -> "ParamFormat":
        return ParamFormat(self.fmt, self.lanes if self.mode == Mode.LANE else 1)

    def pack(self, beats: dict[str, np.ndarray]) -> list[int]:
        """Pack arrays (leading dim = beat; lane fields [beats, L]) into one integer per beat."""
        n = len(np.asarray(beats["last"]).reshape(-1))
        return words_of(bit_matrix(field_columns(self.fields, beats, n), n))


@dataclass(frozen=True)
class ParamFormat:
    """Bit layout of one parameter-memory word, LSB first: ``groups_per_word`` groups (1, or L in lane mode),
    each scale[R] (unsigned F-bit mantissas, one per region) then, where the layer has them, one signed
    Z-bit zero-point (affine) or one unsigned Bw-bit breakpoint P (PWLQ: the tails' offset; no zero-point).

    The one definition of the parameter word: the PE's layout (``hw.config``), its initial contents, the
    testbench's ``params.hex`` and ``hw build``'s all come from :meth:`fields_of`.
    """

    fmt: ContractFormat
    groups_per_word: int

    @property
    def group_fields(self) -> tuple[Field, ...]:
        f = self.fmt
        fields = [Field("scale", f.scale_bits, False, f.regions)]
        if f.zero_point_bits:
            fields.append(Field("zero_point", f.zero_point_bits, True))
        if f.breakpoint_bits:
            fields.append(Field("breakpoint", f.breakpoint_bits, False))
        return tuple(fields)

    def uses_zero_point(self, region: int) -> bool:
        """Whether ``region`` has a stored zero-point (else it is fixed at 0: symmetric, PWLQ)."""
        return bool(self.fmt.zero_point_bits) and region == 0

    def uses_breakpoint(self, region: int) -> bool:
        """Whether ``region`` adds the stored breakpoint, ``sgn B x`` (PWLQ tails only)."""
        return bool(self.fmt.breakpoint_bits) and region == 1

    @property
    def width(self) -> int:
        return self.groups_per_word * sum(f.width for f in self.group_fields)

    def group_values(self, contract: LayerContract) -> dict[str, np.ndarray]:
        """Each group's field values, [G, items]."""
        values = {"scale": contract.scale_int.numpy().astype(np.int64),
                  "zero_point": contract.zero_point.numpy().astype(np.int64)[:, :1]}
        if self.fmt.breakpoint_bits:
            values["breakpoint"] = contract.breakpoint.numpy().astype(np.int64)[:, None]
        return values

    def fields_of(self, contract: LayerContract, depth: int) -> tuple[list, int]:
        """(columns, rows) for :func:`~sw.intref.packing.bit_matrix`: ``depth`` words holding every group of
        ``contract`` (lane mode: unused slots zero). A format wider than the layer's sign-extends its values."""
        slots = depth * self.groups_per_word
        values = {}
        for name, v in self.group_values(contract).items():
            if len(v) > slots:
                raise ValueError(f"{contract.name}: {len(v)} groups do not fit {depth} parameter words")
            padded = np.zeros((slots, v.shape[1]), dtype=np.int64)
            padded[:len(v)] = v
            values[name] = padded.reshape(depth, self.groups_per_word, -1)
        columns = [(values[f.name][:, g], f.bits) for g in range(self.groups_per_word) for f in self.group_fields]
        return columns, depth

    def pack(self, contract: LayerContract, depth: int) -> list[int]:
        return words_of(bit_matrix(*self.fields_of(contract, depth)))


@dataclass
class StreamLayout:
    """Beats of one layer's dot products for a PE with ``lanes`` lanes."""

    contract: LayerContract
    lanes: int
    mode: Mode
    lane_element: np.ndarray   # [beats, L] element index (into c*kh*kw, row-major), -1 = idle lane
    beat_addr: np.ndarray      # [o, beats] parameter memory address of each beat
    param_words: int           # parameter memory depth

    @classmethod
    def build(cls, contract: LayerContract, lanes: int, mode: Mode | str | None = None) -> "StreamLayout":
        mode = mode_for(contract.granularity) if mode is None else mode
        if mode not in MODES or lanes < 1:
            raise ValueError(f"bad stream mode {mode!r} or lanes {lanes}")
        o = contract.shape[0]
        n = contract.fmt.fan_in
        gid = contract.group_ids.reshape(o, n).numpy()
        mode = Mode(mode)
        if mode == Mode.LANE:
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

    def weight_values(self, channels: slice | int = slice(None)) -> dict[str, np.ndarray]:
        """Per-beat values of the WEIGHTS fields (code, tail, addr, last) of the given output channels:
        [o, beats, L] for lane fields, [o, beats] for the others (idle lanes: code 0, tail 0)."""
        c = self.contract
        o = c.shape[0]
        picked = np.arange(o)[channels]
        idx = self.lane_element
        idle = idx < 0
        gather = np.maximum(idx, 0)
        codes = c.codes.reshape(o, -1).numpy().astype(np.int64)[picked][..., gather]
        last = np.zeros((o, self.beats), dtype=np.int64)[picked]
        last[..., -1] = 1
        values = {"code": np.where(idle, 0, codes), "addr": self.beat_addr[picked].astype(np.int64), "last": last}
        if c.fmt.pwlq:
            tails = c.region.reshape(o, -1).numpy().astype(np.int64)[picked][..., gather]
            values["tail"] = np.where(idle, 0, tails)
        return values

    def weight_beats(self, out_channel: int) -> dict[str, np.ndarray]:
        """Per-beat code, tail bit, address and last flag for one output channel."""
        return self.weight_values(out_channel)

    def weight_fields(self, stream: StreamFormat | None = None) -> tuple[list, int]:
        """(columns, rows) of every output channel's beats without their activations (channel-major), in
        ``stream``'s layout (default: this layer's own): what ``weights.hex`` holds."""
        stream = stream or self.stream_format()
        rows = self.contract.shape[0] * self.beats
        return field_columns(stream.part(WEIGHTS), self.weight_values(), rows), rows

    def act_fields(self, columns: np.ndarray, stream: StreamFormat | None = None) -> tuple[list, int]:
        """(columns, rows) of the activation part of every beat of each im2col row of ``columns`` [P, N]."""
        stream = stream or self.stream_format()
        acts = self.act_beats(np.asarray(columns, dtype=np.int64))  # [P, beats, L]
        rows = acts.shape[0] * self.beats
        return field_columns(stream.part(ACTS), {"act": acts}, rows), rows

    def act_beats(self, columns: np.ndarray) -> np.ndarray:
        """Activation codes per beat and lane, [..., beats, L], from im2col columns [..., N] (idle lanes: 0)."""
        idx = self.lane_element
        return np.where(idx < 0, 0, np.take(columns, np.maximum(idx, 0), axis=-1))

    def param_fields(self, param_format: ParamFormat | None = None) -> tuple[list, int]:
        """(columns, rows) of this layer's parameter words in ``param_format`` (default: its own)."""
        pf = param_format or self.stream_format().param_format
        return pf.fields_of(self.contract, self.param_words)


def im2col(x_int: torch.Tensor, contract: LayerContract, stride: int, padding: int, pad_code: int) -> np.ndarray:
    """Activation codes of every dot product: [n, positions, N] (row-major c, kh, kw), padding = ``pad_code``."""
    _, c, kh, kw = contract.shape
    x = torch.nn.functional.pad(x_int.double(), [padding] * 4, value=float(pad_code)) if padding else x_int.double()
    cols = torch.nn.functional.unfold(x, (kh, kw), stride=stride)  # [n, N, positions]
    return cols.transpose(1, 2).numpy().astype(np.int64)


def _split(code: np.ndarray, tail: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(sign, u): a tail code's sign and value (:func:`sw.quant.pwlq.unpack_tail`); (+1, code) elsewhere."""
    if tail is None:
        return np.ones_like(code), code
    negative, u_tail = (t.numpy() for t in unpack_tail(torch.from_numpy(code), k))
    return np.where(negative & (tail == 1), -1, 1), np.where(tail == 1, u_tail, code)


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
    if layout.mode == Mode.GROUP:
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
