"""The co-simulation testbench top, ``sim/hdl/yoloq_cosim_tb.v``: the processing element plus a driver that
streams from memories, filled in here from the PE's config.

Driving a PE from Python one cycle at a time costs a Python call (and a simulator round trip) per beat;
a whole model is ~10^5-10^6 beats. So the testbench is mostly HDL: ``yoloq_cosim_tb``

1. preloads its stimulus memories with ``$readmemh`` from the run folder (``weights.hex``, ``acts.hex``,
   ``params.hex``, ``program.hex``; see :mod:`sim.stimulus` and :mod:`sim.cosim`);
2. runs a *program*: one entry per layer, each first writing the layer's parameter words into the PE
   through its ``params`` write port, then streaming every (position, output channel, beat) as beats on
   ``elements``, each ``{weight word, activation word}``, and waiting until all the layer's results are out;
3. inserts pseudo-random idle cycles on ``elements.valid`` and back-pressure on ``results.ready`` from a
   xorshift32 generator (seed and rates are plusargs, so one build serves every seed);
4. writes each result as ``<layer> <signed accumulator>`` to ``results.txt`` and raises ``done``; a
   watchdog raises ``timed_out`` too if nothing moves (no beat, result or parameter write) for
   ``+watchdog=`` cycles (default 2^16: far beyond the PE's latency and the longest idle run), i.e. a hung PE;
5. monitors the PE's ``results`` stream: a result once offered must stay offered, unchanged, until taken
   (``protocol_errors`` counts the cycles that break this).

The valid/ready source follows the stream rules (valid is not withdrawn before a transfer, the payload is
stable while valid). The clock and reset come from cocotb (:mod:`sim.tb_pe`), which then waits for ``done``.

:func:`testbench_parameters` fills the HDL's parameters; :func:`check_testbench` holds the HDL to the PE:
its port connections are exactly the PE signature's ports, and a beat's activation fields are its lowest
bits, as ``{weight word, activation word}`` assumes. Memory depths are rounded up to powers of two so that
one compiled model serves runs of similar size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from hw import build
from hw.config import PEConfig
from hw.layer_unit import LayerUnit, LayerUnitConfig, layer_unit_signature
from hw.pe import pe_signature, port_name
from sw.intref.stream import ACTS, WEIGHTS

from .faults import EPILOGUE_FAULTS, epilogue_class, pe_class

TOP = "yoloq_cosim_tb"
TESTBENCH_HDL = Path(__file__).resolve().parent / "hdl" / f"{TOP}.v"
PE_MACRO = "YOLOQ_PE"  # the HDL instantiates `YOLOQ_PE: the build defines it as the PE module's name
UNIT_MACRO = "YOLOQ_UNIT"  # defined when `YOLOQ_PE is a layer unit (PE + epilogue)
PROGRAM_FIELDS = ("param_base", "param_count", "weight_base", "beats", "outs", "act_base", "positions",
                  "epilogue_base", "table_base")
PROGRAM_FIELD_BITS = 32
WATCHDOG_CYCLES = 1 << 16  # +watchdog= default: cycles without any transfer or parameter write


def dut_signature(cfg: PEConfig | LayerUnitConfig):
    """The signature of what the testbench drives: a PE, or a layer unit (PE + epilogue)."""
    return layer_unit_signature(cfg) if isinstance(cfg, LayerUnitConfig) else pe_signature(cfg)


def pe_config(cfg: PEConfig | LayerUnitConfig) -> PEConfig:
    return cfg.pe if isinstance(cfg, LayerUnitConfig) else cfg


def pe_ports(cfg: PEConfig | LayerUnitConfig) -> dict[tuple[str, ...], str]:
    """The Verilog port name of every port member of the PE's (or layer unit's) signature."""
    return {path: port_name(path) for path, member in dut_signature(cfg).members.flatten() if member.is_port}


def depth_for(n: int, minimum: int = 1024) -> int:
    """Memory depth for ``n`` words: a power of two, so similar runs share a build."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


@dataclass(frozen=True)
class MemoryDepths:
    weights: int
    acts: int
    params: int
    program: int
    epilogue: int = 1024  # layer unit only
    table: int = 1024

    @classmethod
    def for_sizes(cls, weights: int, acts: int, params: int, layers: int, epilogue: int = 0,
                  table: int = 0) -> "MemoryDepths":
        return cls(depth_for(weights), depth_for(acts), depth_for(params), depth_for(layers + 1, 16),
                   depth_for(epilogue), depth_for(table))


def pe_variant(fault: str | None, memory: str = "generic") -> str:
    """How a co-simulated PE (or layer unit) differs from the plain one (:func:`hw.build.pe_module_name`'s
    ``variant``)."""
    return "_".join(part for part in (fault, "ecp5mem" if memory == "ecp5" else None) if part)


def pe_verilog(cfg: PEConfig | LayerUnitConfig, fault: str | None = None, cache: Path | None = None,
               memory: str = "generic") -> tuple[str, str]:
    """(module name, Verilog) of the PE (or layer unit) with empty memories (the testbench loads them), cached
    as :func:`hw.build.pe_verilog` caches it: the plain PE is the very module ``hw build`` writes.
    ``fault``: a deliberately wrong PE or epilogue (:mod:`sim.faults`; an epilogue's only in a layer unit);
    ``memory="ecp5"``: the parameter memories of DP16KD block RAMs that ECP5 synthesis uses."""
    if isinstance(cfg, LayerUnitConfig):
        pe_fault = None if fault in EPILOGUE_FAULTS else fault

        def make():
            return LayerUnit(cfg, memory=memory, pe_class=pe_class(pe_fault), epilogue_class=epilogue_class(fault))
    elif fault in EPILOGUE_FAULTS:
        raise ValueError(f"fault {fault!r} is in the epilogue; a PE alone has none (co-simulate the layer unit)")
    else:
        def make():
            return pe_class(fault)(cfg, None, memory=memory)
    return build.pe_verilog(cfg, pe_variant(fault, memory), make, cache)


def testbench_parameters(cfg: PEConfig | LayerUnitConfig, depths: MemoryDepths) -> dict[str, int]:
    """The HDL parameters of ``yoloq_cosim_tb`` for a PE (or layer unit) of ``cfg``."""
    check_testbench(cfg)
    pe = pe_config(cfg)
    params = {"ACT_BITS": sum(f.width for f in pe.stream.part(ACTS)),
              "WEIGHT_BITS": sum(f.width for f in pe.stream.part(WEIGHTS)),
              "PARAM_WORD_BITS": pe.word_layout.size, "PARAM_ADDR_BITS": pe.addr_bits, "ACC_BITS": pe.acc_bits,
              "WEIGHT_DEPTH": depths.weights, "ACT_DEPTH": depths.acts, "PARAM_DEPTH": depths.params,
              "PROGRAM_DEPTH": depths.program, "WATCHDOG_CYCLES": WATCHDOG_CYCLES}
    if isinstance(cfg, LayerUnitConfig):
        e = cfg.epilogue
        params.update({"OUT_BITS": e.fmt.out_bits, "SUM_BITS": e.fmt.sum_bits, "EPI_WORD_BITS": e.param_layout.size,
                       "EPI_ADDR_BITS": e.channel_bits, "TABLE_ADDR_BITS": e.table_addr_bits,
                       "COUNT_BITS": e.count_bits, "EPI_DEPTH": depths.epilogue, "TABLE_DEPTH": depths.table})
    return params


def check_testbench(cfg: PEConfig | LayerUnitConfig) -> None:
    """The HDL connects every port of the PE's (or layer unit's) signature, no other, reads program entries in
    :data:`PROGRAM_FIELDS` order, and a beat's fields from the activation memory are its lowest bits."""
    text = TESTBENCH_HDL.read_text()
    unit_at = text.index("`YOLOQ_PE pe (")                 # the `ifdef YOLOQ_UNIT branch comes first
    instance = text[unit_at if isinstance(cfg, LayerUnitConfig) else text.index("`YOLOQ_PE pe (", unit_at + 1):]
    connected = set(re.findall(r"\.(\w+)\(", instance[:instance.index(");")])) - {"clk", "rst"}
    ports = set(pe_ports(cfg).values())
    if connected != ports:
        raise ValueError(f"{TESTBENCH_HDL.name} connects {sorted(connected)}, the PE has {sorted(ports)}")
    fields = [name for name, _ in sorted(re.findall(r"wire \[31:0\] e_(\w+) = entry\[(\d+)\*32", text),
                                         key=lambda item: int(item[1]))]
    if fields != list(PROGRAM_FIELDS):
        raise ValueError(f"{TESTBENCH_HDL.name} reads program fields {fields}, sim.cosim writes {PROGRAM_FIELDS}")
    sources = [f.source for f in pe_config(cfg).stream.fields]
    if sources != sorted(sources, key=lambda src: src != ACTS):
        raise ValueError(f"a beat's activation fields must be its lowest bits, got {sources}")
