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

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from hw.build import generator_digest
from hw.config import PEConfig
from hw.layer_build import unit_generator_digest
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


def pe_module_name(cfg: PEConfig | LayerUnitConfig, fault: str | None, memory: str = "generic") -> str:
    """A name for the PE (or layer unit) module that says what it is (the Verilator waivers match
    ``*yoloq_pe_*`` and ``*yoloq_unit_*``)."""
    pe = pe_config(cfg)
    f = pe.fmt
    name = (f"yoloq_pe_cosim_{pe.mode}_l{pe.lanes}_k{f.weight_bits}{'p' if f.pwlq else 'u'}_a{f.act_bits}"
            f"_f{f.scale_bits}_z{f.zero_point_bits}_b{f.breakpoint_bits}_acc{f.acc_bits}_w{pe.param_words}")
    if isinstance(cfg, LayerUnitConfig):
        e = cfg.epilogue.fmt
        name = name.replace("yoloq_pe_cosim_", "yoloq_unit_cosim_") + \
            (f"_e{e.acc_bits}_{e.offset_bits}_{e.out_bits}_{e.pre_bits}_{e.multiplier_bits}_{e.max_shift}"
             f"_c{cfg.epilogue.channels}")
    return name + (f"_{fault}" if fault else "") + ("_ecp5mem" if memory == "ecp5" else "")


def pe_verilog(cfg: PEConfig | LayerUnitConfig, fault: str | None = None, cache: Path | None = None,
               memory: str = "generic") -> tuple[str, str]:
    """(module name, Verilog) of the PE with an empty parameter memory (the testbench loads it).

    Elaborating a wide PE takes Amaranth 10-60 s, so with ``cache`` the Verilog is kept, keyed by the
    config, the fault, the memory kind and :func:`hw.build.generator_digest` (any change to the generator makes
    a new entry). ``memory="ecp5"``: the parameter memory of DP16KD block RAMs that ECP5 synthesis uses.
    """
    name = pe_module_name(cfg, fault, memory)
    unit = isinstance(cfg, LayerUnitConfig)
    path = None
    if cache is not None:
        digest = unit_generator_digest() if unit else generator_digest()
        key = hashlib.sha256(repr((cfg, fault, memory, digest)).encode()).hexdigest()[:20]
        path = Path(cache) / "pe-verilog" / f"{name}-{key}.v"
        if path.exists():
            return name, path.read_text()
    if unit:
        pe_fault = None if fault in EPILOGUE_FAULTS else fault
        design = LayerUnit(cfg, memory=memory, pe_class=pe_class(pe_fault), epilogue_class=epilogue_class(fault))
    elif fault in EPILOGUE_FAULTS:
        raise ValueError(f"fault {fault!r} is in the epilogue; a PE alone has none (co-simulate the layer unit)")
    else:
        design = pe_class(fault)(cfg, None, memory=memory)
    source = verilog.convert(design, name=name, emit_src=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    return name, source


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
