"""The PE's parameter memory: scales and zero-points per group (and region), with a registered read.

Reads take :data:`READ_LATENCY` cycles: the address register, then an output register. The output register
is what lets a block RAM run at full speed: on ECP5 a DP16KD read without it takes ~5.8 ns clock-to-out,
with it well under 1 ns. Two implementations, identical in function:

- :class:`ParamMemory` (portable): an ``amaranth.lib.memory.Memory`` and a register on its read data.
  Yosys maps the memory to block RAM, and on ECP5 never to the RAM's own output register.
- :class:`ECP5ParamMemory`: DP16KD blocks instantiated with ``REGMODE = "OUTREG"``, for ECP5 synthesis.
  It starts zeroed (loaded through the write port), so layer builds with initial contents use the portable one.

In both, ``read_en`` gates the address register and the output register; the PE ties it high, since its
pipeline never stalls. A read of the word being written in the same cycle is undefined on the DP16KD (the
two ports collide); the PE never relies on one (a layer's parameters are written before its beats).
``sim/ecp5_memory.py`` checks the two against each other, cycle for cycle, in simulation.
"""

from __future__ import annotations

from amaranth import ClockSignal, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

READ_LATENCY = 2
# DP16KD geometries (data bits per port, words), widest first; address bits below log2(units) are unused
_DP16KD_MODES = [(18, 1024, 4), (9, 2048, 3), (4, 4096, 2), (2, 8192, 1), (1, 16384, 0)]


def memory_signature(word_bits: int, depth: int) -> wiring.Signature:
    addr = unsigned(max(1, (depth - 1).bit_length()))
    return wiring.Signature({
        "write_en": In(1), "write_addr": In(addr), "write_data": In(word_bits),
        "read_en": In(1), "read_addr": In(addr), "read_data": Out(word_bits),
    })


class ParamMemory(wiring.Component):
    """Portable parameter memory with a two-cycle registered read."""

    def __init__(self, word_bits: int, depth: int, init: list[int] | None = None):
        self.word_bits, self.depth, self._init = word_bits, depth, init or []
        super().__init__(memory_signature(word_bits, depth))

    def elaborate(self, platform):
        m = Module()
        m.submodules.ram = ram = Memory(shape=unsigned(self.word_bits), depth=self.depth, init=self._init)
        wr, rd = ram.write_port(), ram.read_port()
        m.d.comb += [wr.en.eq(self.write_en), wr.addr.eq(self.write_addr), wr.data.eq(self.write_data),
                     rd.en.eq(self.read_en), rd.addr.eq(self.read_addr)]
        with m.If(self.read_en):
            m.d.sync += self.read_data.eq(rd.data)
        return m


class ECP5ParamMemory(wiring.Component):
    """ECP5 parameter memory: DP16KD tiles, port A reads through its output register, port B writes."""

    def __init__(self, word_bits: int, depth: int):
        self.word_bits, self.depth = word_bits, depth
        super().__init__(memory_signature(word_bits, depth))

    def elaborate(self, platform):
        m = Module()
        width, words, low = next(g for g in _DP16KD_MODES if g[1] >= min(self.depth, 16384))
        banks = -(-self.depth // words)
        columns = -(-self.word_bits // width)
        bank_bits = max(0, (banks - 1).bit_length())
        read_bank = Signal(max(1, bank_bits))
        if banks > 1:  # bank select travels with the read through both registers
            bank_addr = Signal.like(read_bank)
            with m.If(self.read_en):
                m.d.sync += [bank_addr.eq(self.read_addr[-bank_bits:] if bank_bits else 0), read_bank.eq(bank_addr)]
        outputs = []
        for bank in range(banks):
            data = Signal(columns * width, name=f"bank{bank}_data")
            write_here = self.write_en & ((self.write_addr >> (self.read_addr.shape().width - bank_bits)) == bank
                                          if bank_bits else 1)
            for col in range(columns):
                ports = {f"i_ADA{i}": 0 for i in range(14)}
                ports.update({f"i_ADB{i}": 0 for i in range(14)})
                for i in range(min(14 - low, len(self.read_addr) - bank_bits)):
                    ports[f"i_ADA{i + low}"] = self.read_addr[i]
                    ports[f"i_ADB{i + low}"] = self.write_addr[i]
                if width == 18:  # x18: AD1, AD0 are the byte write enables; the write port writes both bytes
                    ports.update(i_ADB0=1, i_ADB1=1)
                wdata = self.write_data.shape().width
                for i in range(width):
                    bit = col * width + i
                    ports[f"i_DIB{i}"] = self.write_data[bit] if bit < wdata else 0
                    ports[f"i_DIA{i}"] = 0
                    ports[f"o_DOA{i}"] = data[col * width + i]
                m.submodules[f"ram_b{bank}_c{col}"] = Instance(
                    "DP16KD",
                    p_DATA_WIDTH_A=width, p_DATA_WIDTH_B=width, p_REGMODE_A="OUTREG", p_REGMODE_B="NOREG",
                    p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                    p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
                    i_CLKA=ClockSignal(), i_CEA=self.read_en, i_OCEA=self.read_en, i_WEA=0, i_RSTA=0,
                    i_CSA0=0, i_CSA1=0, i_CSA2=0,
                    i_CLKB=ClockSignal(), i_CEB=1, i_OCEB=1, i_WEB=write_here, i_RSTB=0,
                    i_CSB0=0, i_CSB1=0, i_CSB2=0, **ports)
            outputs.append(data)
        selected = outputs[0]
        for bank in range(1, banks):
            selected = Mux(read_bank == bank, outputs[bank], selected)
        m.d.comb += self.read_data.eq(selected[:self.word_bits])
        return m
