"""Deliberately wrong processing elements and epilogues, for checking that a testbench catches them (mutation
checks).

Each is a subclass of :class:`hw.pe.ProcessingElement` or :class:`hw.epilogue.Epilogue` overriding one step
of its datapath; the production designs carry no fault logic. ``yoloq hw cosim --fault NAME`` and the tests
build them by name.
"""

from __future__ import annotations

from amaranth import Cat

from amaranth import Mux

from hw import EPILOGUE_FAULTS as EPILOGUE_FAULT_NAMES
from hw import PE_FAULTS
from hw.epilogue import Epilogue
from hw.pe import ProcessingElement


class ZeroPointOffByOne(ProcessingElement):
    """Uses z + 1 wherever a stored zero-point is used (PWLQ, which has none: the tails' offset B + 1)."""

    def _zero_point(self, word, region):
        z = super()._zero_point(word, region)
        return None if z is None else (z + 1)[:z.shape().width + 1].as_signed()

    def _breakpoint(self, word, region):
        b = super()._breakpoint(word, region)
        return None if b is None else b + 1


class DroppedCarry(ProcessingElement):
    """Loses the running sum's carry out of bit 15."""

    def _accumulate(self, running, contrib):
        low = running[:16] + contrib[:16]
        return Cat(low[:16], running[16:] + contrib[16:])


FAULTS: dict[str, type[ProcessingElement]] = {"zero_point_off_by_one": ZeroPointOffByOne,
                                              "dropped_carry": DroppedCarry}
assert tuple(FAULTS) == PE_FAULTS, "hw.PE_FAULTS (the CLI's torch-free list) names these variants"


def pe_class(fault: str | None) -> type[ProcessingElement]:
    """The PE to build: the production one, or the named faulty variant."""
    if fault is None:
        return ProcessingElement
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    return FAULTS[fault]


class FloorRounding(Epilogue):
    """Rounds the requantizer's product down (floor, a plain arithmetic shift) instead of half up."""

    def _round(self, shifted, passthrough):
        return Mux(passthrough, shifted, shifted >> 1)


class TableEntryOffByOne(Epilogue):
    """Reads the activation table's entry of pre-activation code 0 (the value 0) one code too high."""

    def _code(self, code, index):
        zero = 1 << (self.cfg.fmt.pre_bits - 1)
        return Mux(index == zero, code + 1, code)[:self.cfg.fmt.out_bits].as_signed()


EPILOGUE_FAULTS: dict[str, type[Epilogue]] = {"floor_rounding": FloorRounding,
                                              "table_entry_off_by_one": TableEntryOffByOne}
assert tuple(EPILOGUE_FAULTS) == EPILOGUE_FAULT_NAMES, "hw.EPILOGUE_FAULTS (torch-free) names these variants"


def epilogue_class(fault: str | None) -> type[Epilogue]:
    """The epilogue to build: the production one, or the named faulty variant (a PE fault leaves it alone)."""
    return EPILOGUE_FAULTS.get(fault, Epilogue) if fault else Epilogue
