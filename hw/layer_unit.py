"""The layer unit: the processing element and the integer epilogue as one component.

Beats in (the PE's ``elements``), the next layer's activation codes out (the epilogue's ``codes``, with
``t = acc + K_c`` beside each code for a Detect conv, whose output is not requantized). The PE's ``results``
stream feeds the epilogue's ``accumulators`` directly: both ends follow the same stream rules and the
epilogue never stalls, so the PE's own result queue only fills while ``outputs`` is held back, and the
credits of both queues keep every result (no ready signal crosses either pipeline).

Configured only from ``sw``'s contract objects: :class:`hw.config.PEConfig` (the PE's stream format) and
:class:`hw.epilogue.EpilogueConfig` (the epilogue's :class:`~sw.intref.epilogue.EpilogueFormat`).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Module
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
        return self.pe.latency + self.epilogue.latency


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
        m.d.comb += [epi.accumulators.payload.eq(pe.results.payload), epi.accumulators.valid.eq(pe.results.valid),
                     pe.results.ready.eq(epi.accumulators.ready)]
        wiring.connect(m, wiring.flipped(self.elements), pe.elements)
        wiring.connect(m, wiring.flipped(self.params), pe.params)
        wiring.connect(m, wiring.flipped(self.outputs), epi.codes)
        wiring.connect(m, wiring.flipped(self.epilogue_params), epi.params)
        wiring.connect(m, wiring.flipped(self.table), epi.table)
        m.d.comb += epi.channels.eq(self.channels)
        return m
