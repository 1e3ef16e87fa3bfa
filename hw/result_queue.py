"""A result queue whose writer never needs to look: the PE reserves a slot before admitting a dot product.

A general FIFO gates every write with a "not full" check; here fullness is impossible by construction
(credits in :class:`hw.pe.ProcessingElement`), so the write enable is a plain registered flag and the write
path has no logic. Reads are first-word-fall-through from an asynchronously read (LUT) memory.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

LATENCY = 1  # a result written at a clock edge is on ``output`` right after it


class ResultQueue(wiring.Component):
    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"write_en": In(1), "write_data": In(signed(width)),
                          "output": Out(stream.Signature(signed(width)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.storage = storage = Memory(shape=signed(self.width), depth=self.depth, init=[])
        wr, rd = storage.write_port(), storage.read_port(domain="comb")
        write_ptr, read_ptr = Signal(range(self.depth)), Signal(range(self.depth))
        count = Signal(range(self.depth + 1))
        taken = self.output.valid & self.output.ready
        m.d.comb += [wr.en.eq(self.write_en), wr.addr.eq(write_ptr), wr.data.eq(self.write_data),
                     rd.addr.eq(read_ptr), self.output.payload.eq(rd.data), self.output.valid.eq(count != 0)]
        def step(ptr):
            return Mux(ptr == self.depth - 1, 0, ptr + 1)

        with m.If(self.write_en):
            m.d.sync += write_ptr.eq(step(write_ptr))
        with m.If(taken):
            m.d.sync += read_ptr.eq(step(read_ptr))
        m.d.sync += count.eq(count + self.write_en - taken)
        return m
