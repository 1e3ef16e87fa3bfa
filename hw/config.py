"""Elaboration parameters of the processing element, taken from ``sw``'s integer contract objects.

:class:`PEConfig` wraps a :class:`sw.intref.stream.StreamFormat` (contract format, lanes, addressing mode)
and the parameter memory depth. The beat and parameter-word layouts are Amaranth views of the field lists
that ``sw`` defines once (:attr:`sw.intref.stream.StreamFormat.fields`,
:attr:`sw.intref.stream.ParamFormat.group_fields`: order, width, signedness); internal datapath widths
follow from the contract's ranges. No width is typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import signed, unsigned
from amaranth.lib import data

from sw.intref.contract import ContractFormat, superset_format
from sw.intref.packing import Field
from sw.intref.stream import Mode, ParamFormat, StreamFormat, StreamLayout, bits_for

from .arith import multiply_stages, tree_stages
from .result_queue import LATENCY as QUEUE_LATENCY

def struct_layout(fields: tuple[Field, ...]) -> data.StructLayout:
    """The Amaranth layout of a field list: same order (LSB first), widths and signedness."""
    def shape(f: Field):
        s = signed(f.bits) if f.signed else unsigned(f.bits)
        return s if f.count is None else data.ArrayLayout(s, f.count)
    return data.StructLayout({f.name: shape(f) for f in fields})


LEVELS = 1  # adder levels between pipeline registers in trees and multipliers (1: highest Fmax)


@dataclass(frozen=True)
class PEConfig:
    stream: StreamFormat
    param_words: int
    levels: int = LEVELS

    @classmethod
    def for_layer(cls, layout: StreamLayout) -> "PEConfig":
        """The PE for one quantized layer's stream layout (its parameter memory holds that layer)."""
        return cls(layout.stream_format(), layout.param_words)

    @classmethod
    def generic(cls, fmt: ContractFormat, lanes: int, mode: Mode | str, groups: int) -> "PEConfig":
        """A PE for any layer of this format with up to ``groups`` groups (e.g. for synthesis studies)."""
        mode = Mode(mode)
        words = groups if mode == Mode.GROUP else -(-groups // lanes)
        return cls(StreamFormat(fmt, lanes, bits_for(words), mode), words)

    @classmethod
    def superset(cls, layouts: list[StreamLayout]) -> "PEConfig":
        """The PE whose every width bounds those of ``layouts`` (one mode and lane count; the contract's
        :func:`~sw.intref.contract.superset_format`), with the deepest parameter memory among them."""
        if len({(lay.mode, lay.lanes) for lay in layouts}) != 1:
            raise ValueError("a superset PE needs layouts of one addressing mode and lane count")
        fmt = superset_format([lay.contract.fmt for lay in layouts])
        words = max(lay.param_words for lay in layouts)
        return cls(StreamFormat(fmt, layouts[0].lanes, bits_for(words), layouts[0].mode), words)

    def check_fits(self, layout: StreamLayout) -> None:
        """A layer runs on this PE only if every width it needs fits (the superset PE's contract)."""
        f, g = layout.contract.fmt, self.fmt
        same = (f.weight_bits, f.pwlq, f.act_bits, f.scale_bits) == (g.weight_bits, g.pwlq, g.act_bits, g.scale_bits)
        if not same or layout.mode != self.mode or layout.lanes != self.lanes or f.zero_point_bits > g.zero_point_bits \
                or f.breakpoint_bits > g.breakpoint_bits or f.acc_bits > g.acc_bits \
                or layout.param_words > self.param_words:
            raise ValueError(f"{layout.contract.name} ({f}, {layout.mode}, {layout.param_words} words) does not fit "
                             f"the PE ({g}, {self.mode}, {self.param_words} words)")

    # ---- from the contract -------------------------------------------------------------------------------
    @property
    def fmt(self) -> ContractFormat:
        return self.stream.fmt

    @property
    def lanes(self) -> int:
        return self.stream.lanes

    @property
    def mode(self) -> Mode:
        return self.stream.mode

    @property
    def addr_bits(self) -> int:
        return self.stream.addr_bits

    @property
    def acc_bits(self) -> int:
        return self.fmt.acc_bits

    @property
    def prod_bits(self) -> int:
        """Width of one lane's ``sgn u x``: a k-bit by A-bit signed product."""
        return self.fmt.weight_bits + self.fmt.act_bits

    # ---- layouts (views of sw's field lists) -------------------------------------------------------------
    @property
    def param_format(self) -> ParamFormat:
        return self.stream.param_format

    @property
    def beat_layout(self) -> data.StructLayout:
        return struct_layout(self.stream.fields)

    @property
    def offset_selector_bits(self) -> int:
        """Width of the operand that selects the partial products of B X: in group mode the breakpoint B
        itself (unsigned: plain AND partial products, no negated top term whose carry chain would meet the
        wide X's fan-out in one cycle), in lane mode the lane's sgn x (A + 1 bits: fewer partial products
        in each of the L per-lane multipliers)."""
        return self.fmt.breakpoint_bits if self.mode == "group" else self.fmt.act_bits + 1

    @property
    def group_word_layout(self) -> data.StructLayout:
        """Parameters of one group: a scale per region and the stored zero-point (affine) or breakpoint (PWLQ)."""
        return struct_layout(self.param_format.group_fields)

    @property
    def word_layout(self) -> data.StructLayout:
        if self.mode == Mode.GROUP:
            return self.group_word_layout
        return data.StructLayout({"lanes": data.ArrayLayout(self.group_word_layout, self.lanes)})

    def scale_of(self, word, region: int):
        return word.scale[region]

    def zero_point_of(self, word, region: int):
        """The zero-point a region uses, or None where it is fixed at 0 (symmetric; PWLQ centre)."""
        return word.zero_point if self.param_format.uses_zero_point(region) else None

    def breakpoint_of(self, word, region: int):
        """The breakpoint B a region adds (``sgn B x``), or None where it is 0 (all but PWLQ tails)."""
        return word.breakpoint if self.param_format.uses_breakpoint(region) else None

    def param_init(self, layout: StreamLayout) -> list[int]:
        """Parameter memory contents (packed words) that run ``layout`` on this PE."""
        self.check_fits(layout)
        return self.param_format.pack(layout.contract, layout.param_words)

    # ---- timing (the PE checks its own depth against these at elaboration) ------------------------------
    @property
    def product_stages(self) -> int:
        return multiply_stages(self.fmt.weight_bits, self.levels) + 1

    @property
    def lane_sum_stages(self) -> int:
        return tree_stages(self.lanes, self.levels) + 1

    @property
    def zero_point_stages(self) -> int:
        """The slot before the scale: T = P - z X (affine), or B X (PWLQ tails, added after the scale)."""
        if self.fmt.breakpoint_bits:
            return multiply_stages(self.offset_selector_bits, self.levels) + 1
        return multiply_stages(self.fmt.zero_point_bits, self.levels) + 2 if self.fmt.zero_point_bits else 0

    @property
    def offset_stages(self) -> int:
        """PWLQ: one more register, where the tails' B X joins S_t P (a two-input adder, not three)."""
        return 1 if self.fmt.breakpoint_bits else 0

    @property
    def scale_stages(self) -> int:
        return multiply_stages(self.fmt.scale_bits, self.levels) + 1

    @property
    def latency(self) -> int:
        """Cycles from accepting a dot product's last beat to its result on ``results``."""
        core = 2 + self.product_stages + self.lane_sum_stages + self.zero_point_stages + self.scale_stages \
            + self.offset_stages
        # group mode registers the beat sum; then the running sum, its end/begin snapshots, their difference
        return core + (1 if self.mode == Mode.GROUP else 0) + 3 + QUEUE_LATENCY

    @property
    def result_fifo_depth(self) -> int:
        """Room for every result that can be in flight, so the pipeline never has to stall."""
        return self.latency + 2

    def storage_bits(self) -> int:
        """Bits of parameter memory that a layer actually uses (words x word width)."""
        return self.param_words * self.word_layout.size
