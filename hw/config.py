"""Elaboration parameters of the processing element, taken from ``sw``'s integer contract objects.

:class:`PEConfig` wraps a :class:`sw.intref.stream.StreamFormat` (contract format, lanes, addressing mode)
and the parameter memory depth. Beat and parameter-word layouts are derived here from those objects, in
the same field order as :meth:`sw.intref.stream.StreamFormat.pack`; internal datapath widths follow from
the contract's ranges. No width is typed by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import signed, unsigned
from amaranth.lib import data

from sw.intref.contract import ContractFormat
from sw.intref.stream import StreamFormat, StreamLayout, bits_for

from .arith import multiply_stages, tree_stages
from .result_queue import LATENCY as QUEUE_LATENCY

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
    def generic(cls, fmt: ContractFormat, lanes: int, mode: str, groups: int) -> "PEConfig":
        """A PE for any layer of this format with up to ``groups`` groups (e.g. for synthesis studies)."""
        words = groups if mode == "group" else -(-groups // lanes)
        return cls(StreamFormat(fmt, lanes, bits_for(words), mode), words)

    # ---- from the contract -------------------------------------------------------------------------------
    @property
    def fmt(self) -> ContractFormat:
        return self.stream.fmt

    @property
    def lanes(self) -> int:
        return self.stream.lanes

    @property
    def mode(self) -> str:
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

    # ---- layouts -----------------------------------------------------------------------------------------
    @property
    def beat_layout(self) -> data.StructLayout:
        fields = {"act": data.ArrayLayout(signed(self.fmt.act_bits), self.lanes),
                  "code": data.ArrayLayout(signed(self.fmt.weight_bits), self.lanes)}
        if self.fmt.pwlq:
            fields["tail"] = data.ArrayLayout(unsigned(1), self.lanes)
        fields.update(addr=unsigned(self.addr_bits), last=unsigned(1))
        layout = data.StructLayout(fields)
        assert layout.size == self.stream.width, "beat layout must match sw's packing"
        return layout

    @property
    def group_word_layout(self) -> data.StructLayout:
        """Parameters of one group: a scale per region and the one stored zero-point (affine, PWLQ tail)."""
        fields = {"scale": data.ArrayLayout(unsigned(self.fmt.scale_bits), self.fmt.regions)}
        if self.fmt.zero_point_bits:
            fields["zero_point"] = signed(self.fmt.zero_point_bits)
        return data.StructLayout(fields)

    @property
    def word_layout(self) -> data.StructLayout:
        if self.mode == "group":
            return self.group_word_layout
        return data.StructLayout({"lanes": data.ArrayLayout(self.group_word_layout, self.lanes)})

    def scale_of(self, word, region: int):
        return word.scale[region]

    def zero_point_of(self, word, region: int):
        """The zero-point a region uses, or None where it is fixed at 0 (symmetric; PWLQ centre)."""
        if not self.fmt.zero_point_bits or (self.fmt.pwlq and region == 0):
            return None
        return word.zero_point

    def _group_init(self, scale: list[int], zero_point: list[int]) -> dict:
        word = {"scale": list(scale)}
        if self.fmt.zero_point_bits:
            word["zero_point"] = zero_point[1] if self.fmt.pwlq else zero_point[0]
        return word

    def param_init(self, words: list[dict] | None) -> list[dict]:
        """Memory contents from :meth:`sw.intref.stream.StreamLayout.param_memory` (zeros when None)."""
        if words is None:
            return []
        if len(words) > self.param_words:
            raise ValueError(f"{len(words)} parameter words for a memory of {self.param_words}")
        if self.mode == "group":
            return [self._group_init(w["scale"], w["zero_point"]) for w in words]
        return [{"lanes": [self._group_init(s, z) for s, z in zip(w["scale"], w["zero_point"])]} for w in words]

    # ---- timing (the PE checks its own depth against these at elaboration) ------------------------------
    @property
    def product_stages(self) -> int:
        return multiply_stages(self.fmt.weight_bits, self.levels) + 1

    @property
    def lane_sum_stages(self) -> int:
        return tree_stages(self.lanes, self.levels) + 1

    @property
    def zero_point_stages(self) -> int:
        return multiply_stages(self.fmt.zero_point_bits, self.levels) + 2 if self.fmt.zero_point_bits else 0

    @property
    def scale_stages(self) -> int:
        return multiply_stages(self.fmt.scale_bits, self.levels) + 1

    @property
    def latency(self) -> int:
        """Cycles from accepting a dot product's last beat to its result on ``results``."""
        core = 2 + self.product_stages + self.lane_sum_stages + self.zero_point_stages + self.scale_stages
        # group mode registers the beat sum; then the running sum, its end/begin snapshots, their difference
        return core + (1 if self.mode == "group" else 0) + 3 + QUEUE_LATENCY

    @property
    def result_fifo_depth(self) -> int:
        """Room for every result that can be in flight, so the pipeline never has to stall."""
        return self.latency + 2

    def storage_bits(self) -> int:
        """Bits of parameter memory that a layer actually uses (words x word width)."""
        return self.param_words * self.word_layout.size
