"""The integer epilogue in RTL: from the PE's accumulators to the next layer's activation codes.

It computes, per result, exactly :meth:`sw.intref.epilogue.LayerEpilogue.apply` (the contract's epilogue,
defined there once): ``t = acc + K_c``, ``p = sat_P(floor((t M_c + 2^(R_c-1)) / 2^R_c))``, ``code = LUT[p]``,
and passes ``t`` along too (a Detect conv's output is not requantized: its consumer is the box decoder).
Everything it is sized by comes from :class:`~sw.intref.epilogue.EpilogueFormat` (:class:`EpilogueConfig`);
its parameter word is exactly ``EpilogueFormat.param_fields`` (packed by :mod:`sw.intref.packing`), its table
``2^pre_bits`` entries of ``out_bits``.

**Which channel a result belongs to.** A channel counter that wraps at the layer's channel count (the
``channels`` input, set while a layer runs), not a channel field carried with each result: the PE's results
leave in the order their dot products were issued (proven in :mod:`hw.formal`), and every stream of a layer
issues the output channels of a position in order (:mod:`sw.intref.stream`), so the count *is* the channel.
Carrying it would widen the PE's beat and its result queue and change the PE, for no information.

**Datapath**, one result per cycle, never stalled (as the PE: a credited result queue absorbs
back-pressure, so no ready signal fans out across the pipeline):

1. the result is taken; its channel's parameter word is read (:data:`hw.param_memory.READ_LATENCY` cycles);
2. ``t = acc + K_c``;
3. ``t M_c`` as a pipelined shift-add product (:func:`hw.arith.multiply`; M_c selects the partial products);
4. the shift, split so that no rounding constant has to be decoded from R_c: for R_c >= 1,
   ``floor((x + 2^(R-1)) / 2^R) = floor((floor(x / 2^(R-1)) + 1) / 2)`` (adding an integer commutes with
   the floor), so a barrel shifter (pipelined, :attr:`EpilogueConfig.shift_levels` levels per register)
   shifts right arithmetically by ``R - 1``, then ``+ 1`` and one more shift round half up
   (:meth:`Epilogue._round`); R_c = 0 passes ``x`` through;
5. saturation to the signed ``pre_bits`` (P) code, without a carry chain over the wide shifted value ``x'``:
   rounding and clamping are monotonic, so ``x'`` may first be narrowed to P + 1 bits, with a flag saying
   whether it fitted (its bits above P all copies of its sign: a LUT reduction over two cycles) and its sign.
   A value that did not fit lies beyond the pre-activation range on its sign's side (``|x'| >= 2^P``, and
   after rounding ``>= 2^(P-1)``); one that did is rounded on P + 2 bits and clamped by a bit test (the
   rounded value is in range exactly when its top two bits agree), no comparison;
6. the table read at ``p + 2^(P-1)`` (block RAM, registered like the parameter memory), then the queue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sw.intref.epilogue import EpilogueFormat, LayerEpilogue
from sw.intref.packing import bit_matrix, field_columns, words_of
from sw.intref.stream import bits_for

from .arith import multiply, multiply_stages
from .config import LEVELS, struct_layout
from .param_memory import READ_LATENCY, ECP5ParamMemory, ParamMemory
from .result_queue import LATENCY as QUEUE_LATENCY
from .result_queue import CreditedQueue

SHIFT_LEVELS = 2  # barrel-shifter levels (2:1 muxes) between registers
REDUCE_CHUNK = 16  # bits of an AND/OR reduction between registers (two levels of 4-input LUTs)


@dataclass(frozen=True)
class EpilogueConfig:
    """An epilogue able to run any layer whose :class:`EpilogueFormat` fits ``fmt`` (:meth:`check_fits`) and
    that has at most ``channels`` output channels (the parameter memory's depth)."""

    fmt: EpilogueFormat
    channels: int
    levels: int = LEVELS
    shift_levels: int = SHIFT_LEVELS

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"an epilogue needs at least one channel, got {self.channels}")

    @classmethod
    def for_layer(cls, ep: LayerEpilogue) -> "EpilogueConfig":
        return cls(ep.fmt, ep.channels)

    def check_fits(self, ep: LayerEpilogue) -> None:
        """A layer's epilogue runs here only if its fields fit and its code widths are the same (the
        saturation bound and the table's size are part of its arithmetic, not upper bounds)."""
        f, g = ep.fmt, self.fmt
        if f.pre_bits != g.pre_bits or f.out_bits != g.out_bits or f.acc_bits > g.acc_bits \
                or f.offset_bits > g.offset_bits or f.multiplier_bits > g.multiplier_bits \
                or f.max_shift > g.max_shift or ep.channels > self.channels:
            raise ValueError(f"{ep.name} ({f}, {ep.channels} channels) does not fit the epilogue "
                             f"({g}, {self.channels} channels)")

    # ---- layouts, from the contract ---------------------------------------------------------------------
    @property
    def param_layout(self) -> data.StructLayout:
        """The per-channel parameter word: exactly ``EpilogueFormat.param_fields`` (offset, multiplier, shift)."""
        return struct_layout(tuple(self.fmt.param_fields))

    @property
    def output_layout(self) -> data.StructLayout:
        """What leaves per result: the consumer's code and the unrequantized ``t = acc + K_c``."""
        return data.StructLayout({"code": signed(self.fmt.out_bits), "sum": signed(self.fmt.sum_bits)})

    @property
    def channel_bits(self) -> int:
        return bits_for(self.channels)

    @property
    def count_bits(self) -> int:
        """Width of the ``channels`` input (a channel count, 1..channels)."""
        return self.channels.bit_length()

    @property
    def table_addr_bits(self) -> int:
        return self.fmt.pre_bits

    # ---- memory contents --------------------------------------------------------------------------------
    def param_init(self, ep: LayerEpilogue) -> list[int]:
        """Packed parameter words of ``ep`` (one per channel), LSB first as ``param_fields``."""
        self.check_fits(ep)
        return words_of(self.param_bits(ep))

    def param_bits(self, ep: LayerEpilogue) -> np.ndarray:
        """The parameter words of ``ep`` as a bit matrix (for ``$readmemh``: :func:`sw.intref.packing.hex_lines`)."""
        values = {"offset": ep.offset.numpy(), "multiplier": ep.multiplier.numpy(), "shift": ep.shift.numpy()}
        return bit_matrix(field_columns(self.fmt.param_fields, values, ep.channels), ep.channels)

    def table_init(self, ep: LayerEpilogue) -> list[int]:
        """The activation table's words: entry ``i`` is the code of pre-activation ``i - 2^(P-1)``."""
        self.check_fits(ep)
        return words_of(self.table_bits(ep))

    def table_bits(self, ep: LayerEpilogue) -> np.ndarray:
        return bit_matrix([(ep.table.numpy().reshape(-1, 1), self.fmt.out_bits)], ep.fmt.lut_entries)

    # ---- timing -----------------------------------------------------------------------------------------
    @property
    def multiply_stages(self) -> int:
        return multiply_stages(self.fmt.multiplier_bits, self.levels) + 1

    @property
    def barrel_stages(self) -> int:
        return -(-self.fmt.shift_bits // self.shift_levels)

    @property
    def latency(self) -> int:
        """Cycles from taking an accumulator to its code on ``codes``."""
        return self.param_stages + self.core_stages + READ_LATENCY + QUEUE_LATENCY

    @property
    def param_stages(self) -> int:
        """The parameter word's read, then one more register: from a block RAM's output straight into the
        41-bit ``t = acc + K_c`` was the layer unit's critical path (193.7 MHz)."""
        return READ_LATENCY + 1

    @property
    def core_stages(self) -> int:
        """Registers from the parameter word to the table's address: t, the product, the barrel's input and
        levels, the rounding, the comparisons and the saturated code."""
        return 1 + self.multiply_stages + 1 + self.barrel_stages + 1 + 2

    @property
    def result_fifo_depth(self) -> int:
        """Room for every code in flight, plus the slot the registered ``ready`` holds back (so a stream
        drained as fast as it comes never sees ``ready`` fall)."""
        return self.latency + 3


def write_port_signature(addr_bits: int, shape) -> wiring.Signature:
    return wiring.Signature({"en": Out(1), "addr": Out(unsigned(addr_bits)), "data": Out(shape)})


def epilogue_signature(cfg: EpilogueConfig) -> wiring.Signature:
    """``accumulators`` (in stream, the PE's ``results``), ``codes`` (out stream of code and sum), the
    parameter memory's and the table's write ports, and ``channels`` (the running layer's channel count)."""
    return wiring.Signature({
        "accumulators": In(stream.Signature(signed(cfg.fmt.acc_bits))),
        "codes": Out(stream.Signature(cfg.output_layout)),
        "params": In(write_port_signature(cfg.channel_bits, cfg.param_layout)),
        "table": In(write_port_signature(cfg.table_addr_bits, signed(cfg.fmt.out_bits))),
        "channels": In(unsigned(cfg.count_bits)),
    })


class Epilogue(wiring.Component):
    """The epilogue of :class:`EpilogueConfig`; ``params_init`` / ``table_init``: initial memory contents
    (:meth:`EpilogueConfig.param_init`, :meth:`EpilogueConfig.table_init`), else zeroed and loaded through
    the write ports. ``memory="ecp5"``: both memories of DP16KD block RAMs with output registers (no init)."""

    def __init__(self, cfg: EpilogueConfig, params_init: list[int] | None = None,
                 table_init: list[int] | None = None, memory: str = "generic"):
        if memory not in ("generic", "ecp5") or (memory == "ecp5" and (params_init or table_init)):
            raise ValueError("memory must be 'generic' or 'ecp5' (ECP5 block RAMs start empty: no init)")
        for what, init, depth in (("parameter", params_init, cfg.channels), ("table", table_init,
                                                                              cfg.fmt.lut_entries)):
            if init is not None and len(init) > depth:
                raise ValueError(f"{len(init)} {what} words for a memory of {depth}")
        self.cfg, self._params_init, self._table_init, self.memory = cfg, params_init, table_init, memory
        super().__init__(epilogue_signature(cfg))

    def _memory(self, bits: int, depth: int, init):
        if self.memory == "ecp5":
            return ECP5ParamMemory(bits, depth)
        return ParamMemory(bits, depth, init)

    def elaborate(self, platform):
        cfg, fmt = self.cfg, self.cfg.fmt
        m = Module()

        def reg(value, name):
            r = Signal.like(value, name=name)
            m.d.sync += r.eq(value)
            return r

        def delay(value, cycles, name):
            for i in range(cycles):
                value = reg(value, f"{name}_d{i}")
            return value

        # results wait in a queue; an accumulator is taken only with a slot reserved for its code (credits).
        # ``ready`` is a register, and so is the take the credit counter sees (``admit``, a cycle late): the
        # producer's handshake never reaches the counter's carry chain in one cycle (which held the first layer
        # unit to 185.8 MHz through ``ready``, and this one to 200.0 MHz through ``admit``). So the counter a cycle
        # ago lacks at most the takes of the two cycles before this one: ``ready`` asks for three free slots, and
        # one is left for the take now. In a drained stream the late ``admit`` makes up for the higher bound (the
        # counter reads one slot more), so the depth's margin stays what it was.
        m.submodules.results = queue = CreditedQueue(cfg.output_layout.size, cfg.result_fifo_depth)
        m.d.comb += [self.codes.valid.eq(queue.output.valid), queue.output.ready.eq(self.codes.ready),
                     self.codes.payload.as_value().eq(queue.output.payload)]
        m.d.sync += self.accumulators.ready.eq(queue.free_slots >= 3)
        taken = self.accumulators.valid & self.accumulators.ready
        m.d.comb += queue.admit.eq(reg(taken, "taken_r"))

        # the channel of the result being taken, and its parameter word READ_LATENCY cycles later
        # (the last channel's index registered: ``channels`` is held while a layer runs, and the counter's
        # compare then starts at registers, not at a subtraction from the input)
        channel = Signal(cfg.channel_bits, name="channel")
        last = Signal(cfg.count_bits, name="last_channel")
        m.d.sync += last.eq(self.channels - 1)
        with m.If(taken):
            m.d.sync += channel.eq(Mux(channel == last, 0, channel + 1))
        m.submodules.params = params = self._memory(cfg.param_layout.size, cfg.channels, self._params_init)
        m.d.comb += [params.write_en.eq(self.params.en), params.write_addr.eq(self.params.addr),
                     params.write_data.eq(self.params.data.as_value()),
                     params.read_en.eq(1), params.read_addr.eq(channel)]
        word = data.View(cfg.param_layout, delay(params.read_data, cfg.param_stages - READ_LATENCY, "param_word"))

        acc = delay(self.accumulators.payload, cfg.param_stages, "acc")
        valid = delay(taken, cfg.param_stages, "valid")

        # t = acc + K_c
        t = reg((acc + word.offset)[:fmt.sum_bits].as_signed(), "t")
        multiplier, shift = reg(word.multiplier, "multiplier"), reg(word.shift, "shift")

        # t M_c: M_c (unsigned) selects the partial products
        product, n = multiply(reg, t, multiplier, "tM", cfg.levels)
        product = reg(product[:fmt.product_bits].as_signed(), "product")
        assert n + 1 == cfg.multiply_stages
        shift = delay(shift, cfg.multiply_stages, "shift_m")

        # x >> (R - 1) (R = 0: x itself), arithmetic, one barrel level per bit of the shift
        shifting = shift.any()  # (not ``shift == 0``, which Amaranth writes as a multi-bit logical not)
        passthrough = reg(~shifting, "passthrough")
        amount = reg(Mux(shifting, shift - 1, 0)[:fmt.shift_bits], "amount")
        shifted = reg(product, "barrel_in")
        for i in range(fmt.shift_bits):
            shifted = Mux(amount[i], shifted >> (1 << i), shifted)
            if (i + 1) % cfg.shift_levels == 0 or i == fmt.shift_bits - 1:
                level = (i + 1 + cfg.shift_levels - 1) // cfg.shift_levels
                shifted = reg(shifted, f"barrel_{level}")
                if i != fmt.shift_bits - 1:
                    amount = reg(amount, f"amount_{level}")
                passthrough = reg(passthrough, f"passthrough_{level}")
        # narrow x' to P + 1 bits, remembering whether it fitted and its sign. Whether the top bits (those that
        # must all equal the sign for x' to fit P + 1 bits, some 45 of them) are all ones or all zeros is
        # reduced per chunk of REDUCE_CHUNK bits here and across the chunks beside the rounding: in one cycle
        # the reduction was the layer unit's critical path (184.6 MHz).
        width = len(shifted)
        narrow = fmt.pre_bits + 1
        negative = shifted[width - 1]
        top = shifted[narrow - 1:]
        chunks = [top[i:i + REDUCE_CHUNK] for i in range(0, len(top), REDUCE_CHUNK)]
        ones = reg(Cat(*(c.all() for c in chunks)), "top_ones")
        zeros = reg(Cat(*(~c.any() for c in chunks)), "top_zeros")
        negative, passthrough = reg(negative, "negative"), reg(passthrough, "passthrough_r")
        low = reg(shifted[:narrow].as_signed(), "narrow")

        # round (narrow), then clamp to the signed pre_bits code. The rounded value has P + 1 bits, so it lies in
        # the code's range exactly when its top two bits agree: a bit test, not a comparison with lo and hi (whose
        # carry chains, then the select, held the layer unit to 195.6 MHz). Out of range, it lies beyond the bound
        # on x's side (rounding half up keeps the sign of a value other than -1, which is in range), so each bit
        # of ``pre`` depends on five bits: two LUT levels.
        lo, hi = fmt.pre_range
        rounded = reg(self._round(low, passthrough)[:narrow].as_signed(), "rounded")
        fits, negative = reg(ones.all() | zeros.all(), "fits"), reg(negative, "negative_r")
        in_range = fits & (rounded[narrow - 1] == rounded[narrow - 2])
        pre = reg(Mux(in_range, rounded[:fmt.pre_bits], Mux(negative, lo, hi)[:fmt.pre_bits]).as_signed(), "pre")

        # the table, indexed by p + 2^(P-1): p with its sign bit inverted
        m.submodules.table = table = self._memory(fmt.out_bits, fmt.lut_entries, self._table_init)
        index = pre.as_unsigned() ^ (1 << (fmt.pre_bits - 1))
        m.d.comb += [table.write_en.eq(self.table.en), table.write_addr.eq(self.table.addr),
                     table.write_data.eq(self.table.data), table.read_en.eq(1), table.read_addr.eq(index)]
        code = self._code(table.read_data.as_signed(), delay(index, READ_LATENCY, "index"))

        # valid and t travel beside the datapath to the table's output
        side_valid = delay(valid, cfg.core_stages + READ_LATENCY, "valid_p")
        side_sum = delay(t, cfg.core_stages - 1 + READ_LATENCY, "sum_p")
        out = Signal(cfg.output_layout, name="out")
        m.d.comb += [out.code.eq(code), out.sum.eq(side_sum),
                     queue.write_en.eq(side_valid), queue.write_data.eq(out.as_value())]
        return m

    # Steps of the datapath as methods, so that sim.faults can build deliberately wrong variants of them.
    def _code(self, code, index):
        """The table's output (``index``: the entry it was read from)."""
        return code

    def _round(self, shifted, passthrough):
        """Round half up the value shifted right by R - 1: ``(x + 1) >> 1``; R = 0: ``x`` unchanged (here on
        the value narrowed to P + 1 bits, see step 5)."""
        return Mux(passthrough, shifted, (shifted + 1) >> 1)
