"""The PE's results: a queue whose writer never needs to look, and the credits that make that safe.

A general FIFO gates every write with a "not full" check; here fullness is impossible by construction: a
dot product is admitted only with a queue slot reserved for its result (:class:`CreditedQueue`), so the write
enable is a plain registered flag and the write path has no logic. Reads are first-word-fall-through from an
asynchronously read (LUT) memory.

Both claims (the credits never admit a result the queue cannot hold; no result is lost, duplicated or
reordered under any valid/ready pattern, and the output keeps the stream rules) are proven with SymbiYosys
by :mod:`hw.formal`.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

LATENCY = 1  # a result written at a clock edge is on ``output`` right after it


class ResultQueue(wiring.Component):
    """``depth`` results; ``write_en`` must never be raised while ``level == depth`` (the credits' job)."""

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"write_en": In(1), "write_data": In(signed(width)),
                          "output": Out(stream.Signature(signed(width))), "level": Out(range(depth + 1))})
        # the state, kept here so that the formal harness (hw.formal) can state invariants over it
        self.storage = Memory(shape=signed(width), depth=depth, init=[])
        self.write_ptr, self.read_ptr = Signal(range(depth), name="write_ptr"), Signal(range(depth), name="read_ptr")

    def elaborate(self, platform):
        m = Module()
        m.submodules.storage = storage = self.storage
        wr, rd = storage.write_port(), storage.read_port(domain="comb")
        write_ptr, read_ptr = self.write_ptr, self.read_ptr
        taken = self.output.valid & self.output.ready
        m.d.comb += [wr.en.eq(self.write_en), wr.addr.eq(write_ptr), wr.data.eq(self.write_data),
                     rd.addr.eq(read_ptr), self.output.payload.eq(rd.data), self.output.valid.eq(self.level != 0)]

        def step(ptr):
            return Mux(ptr == self.depth - 1, 0, ptr + 1)

        with m.If(self.write_en):
            m.d.sync += write_ptr.eq(step(write_ptr))
        with m.If(taken):
            m.d.sync += read_ptr.eq(step(read_ptr))
        m.d.sync += self.level.eq(self.level + self.write_en - taken)
        return m


class CreditedQueue(wiring.Component):
    """A :class:`ResultQueue` of ``depth`` slots and one counter of unreserved slots (credits).

    ``admit`` (a dot product's last beat accepted, which the PE does only while ``can_admit``) takes a slot; a slot comes back
    a cycle after its result leaves ``output`` (safe, and it keeps the output handshake short). ``depth``
    must exceed the number of results that can be between admission and the queue, which is what
    :attr:`hw.config.PEConfig.result_fifo_depth` sizes.
    """

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"admit": In(1), "can_admit": Out(1), "write_en": In(1), "write_data": In(signed(width)),
                          "output": Out(stream.Signature(signed(width))),
                          "free_slots": Out(range(depth + 1), init=depth), "level": Out(range(depth + 1))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = ResultQueue(self.width, self.depth)
        wiring.connect(m, wiring.flipped(self.output), queue.output)
        m.d.comb += [queue.write_en.eq(self.write_en), queue.write_data.eq(self.write_data),
                     self.level.eq(queue.level), self.can_admit.eq(self.free_slots != 0)]
        returned = Signal(name="slot_returned")
        m.d.sync += returned.eq(self.output.valid & self.output.ready)
        m.d.sync += self.free_slots.eq(self.free_slots - self.admit + returned)
        return m
