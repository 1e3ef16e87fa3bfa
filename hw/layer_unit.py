"""The layer unit: the processing element and the integer epilogue as one component.

Beats in (the PE's ``elements``), the next layer's activation codes out (the epilogue's ``codes``, with
``t = acc + K_c`` beside each code for a Detect conv, whose output is not requantized). The PE's ``results``
stream feeds the epilogue's ``accumulators`` through a :class:`RegisterSlice`: without it the PE's queue
level (its ``valid``) and the epilogue's credit counter (its ``ready``) meet in one combinational path, a
carry chain included, which held the first layer unit to 173 MHz on ECP5. Neither pipeline ever stalls, so
the PE's own result queue only fills while ``outputs`` is held back, and the credits of both queues keep
every result.

Configured only from ``sw``'s contract objects: :class:`hw.config.PEConfig` (the PE's stream format) and
:class:`hw.epilogue.EpilogueConfig` (the epilogue's :class:`~sw.intref.epilogue.EpilogueFormat`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import PEConfig
from .epilogue import Epilogue, EpilogueConfig, epilogue_signature
from .pe import ProcessingElement, pe_signature


@dataclass(frozen=True)
class LayerUnitConfig:
    pe: PEConfig
    epilogue: EpilogueConfig

    def __post_init__(self):
        if self.epilogue.fmt.acc_bits < self.pe.acc_bits:
            raise ValueError(f"the epilogue takes {self.epilogue.fmt.acc_bits}-bit accumulators, the PE makes "
                             f"{self.pe.acc_bits}-bit ones")

    @property
    def latency(self) -> int:
        """Cycles from a dot product's last beat to its code on ``outputs``."""
        return self.pe.latency + RegisterSlice.LATENCY + self.epilogue.latency


class RegisterSlice(wiring.Component):
    """A full-throughput register stage of a stream (a skid buffer): ``sink.ready`` and ``source.valid`` are
    registers, so neither side's handshake logic reaches the other's in one cycle. A transfer offered while
    ``source`` is held back waits in the second (skid) register."""

    LATENCY = 1

    def __init__(self, shape):
        super().__init__({"sink": In(stream.Signature(shape)), "source": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        skid_valid = Signal(name="skid_valid")
        skid = Signal.like(self.sink.payload, name="skid")
        m.d.comb += self.sink.ready.eq(~skid_valid)
        # The skid register follows the input while it is empty, whatever ``sink.valid``: its (wide) load
        # enable is then a register's, never the producer's handshake logic (which held the first layer unit
        # to 168.1 MHz); ``skid_valid`` says whether it holds a transfer.
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.sink.payload)
        with m.If(self.source.ready | ~self.source.valid):  # the output register is free (or leaving)
            with m.If(skid_valid):
                m.d.sync += [self.source.payload.eq(skid), self.source.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.source.payload.eq(self.sink.payload), self.source.valid.eq(self.sink.valid)]
        with m.Elif(self.sink.valid & ~skid_valid):         # held: park the offered transfer
            m.d.sync += skid_valid.eq(1)
        return m


def layer_unit_signature(cfg: LayerUnitConfig) -> wiring.Signature:
    """``elements`` and ``params`` as the PE's; ``outputs``, ``epilogue_params``, ``table`` and ``channels``
    as the epilogue's ``codes``, ``params``, ``table`` and ``channels``."""
    pe, epi = pe_signature(cfg.pe).members, epilogue_signature(cfg.epilogue).members
    return wiring.Signature({
        "elements": pe["elements"], "params": pe["params"],
        "outputs": Out(stream.Signature(cfg.epilogue.output_layout)),
        "epilogue_params": epi["params"], "table": epi["table"], "channels": In(epi["channels"].shape),
    })


class LayerUnit(wiring.Component):
    """PE then epilogue. ``pe_init``, ``params_init``, ``table_init``: initial memory contents (else loaded
    through the write ports); ``memory="ecp5"``: DP16KD block RAMs (no init). ``pe_class`` and
    ``epilogue_class`` build a deliberately wrong variant of either (:mod:`sim.faults`)."""

    def __init__(self, cfg: LayerUnitConfig, pe_init: list[int] | None = None,
                 params_init: list[int] | None = None, table_init: list[int] | None = None,
                 memory: str = "generic", pe_class=ProcessingElement, epilogue_class=Epilogue):
        self.cfg = cfg
        self._parts = (pe_class, pe_init, epilogue_class, params_init, table_init, memory)
        super().__init__(layer_unit_signature(cfg))

    def elaborate(self, platform):
        pe_class, pe_init, epilogue_class, params_init, table_init, memory = self._parts
        m = Module()
        m.submodules.pe = pe = pe_class(self.cfg.pe, pe_init, memory=memory)
        m.submodules.epilogue = epi = epilogue_class(self.cfg.epilogue, params_init, table_init, memory=memory)
        # the epilogue's accumulator may be wider than this PE's (a superset epilogue): sign-extended
        m.submodules.slice = cut = RegisterSlice(epi.accumulators.payload.shape())
        m.d.comb += [cut.sink.payload.eq(pe.results.payload), cut.sink.valid.eq(pe.results.valid),
                     pe.results.ready.eq(cut.sink.ready)]
        wiring.connect(m, cut.source, epi.accumulators)
        wiring.connect(m, wiring.flipped(self.elements), pe.elements)
        wiring.connect(m, wiring.flipped(self.params), pe.params)
        wiring.connect(m, wiring.flipped(self.outputs), epi.codes)
        wiring.connect(m, wiring.flipped(self.epilogue_params), epi.params)
        wiring.connect(m, wiring.flipped(self.table), epi.table)
        m.d.comb += epi.channels.eq(self.channels)
        return m
