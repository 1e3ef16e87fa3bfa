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
from hw.pe import pe_signature, port_name
from sw.intref.stream import ACTS, WEIGHTS

from .faults import pe_class

TOP = "yoloq_cosim_tb"
TESTBENCH_HDL = Path(__file__).resolve().parent / "hdl" / f"{TOP}.v"
PE_MACRO = "YOLOQ_PE"  # the HDL instantiates `YOLOQ_PE: the build defines it as the PE module's name
PROGRAM_FIELDS = ("param_base", "param_count", "weight_base", "beats", "outs", "act_base", "positions")
PROGRAM_FIELD_BITS = 32
WATCHDOG_CYCLES = 1 << 16  # +watchdog= default: cycles without any transfer or parameter write


def pe_ports(cfg: PEConfig) -> dict[tuple[str, ...], str]:
    """The Verilog port name of every port member of the PE's signature."""
    return {path: port_name(path) for path, member in pe_signature(cfg).members.flatten() if member.is_port}


def depth_for(n: int, minimum: int = 1024) -> int:
    """Memory depth for ``n`` words: a power of two, so similar runs share a build."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


@dataclass(frozen=True)
class MemoryDepths:
    weights: int
    acts: int
    params: int
    program: int

    @classmethod
    def for_sizes(cls, weights: int, acts: int, params: int, layers: int) -> "MemoryDepths":
        return cls(depth_for(weights), depth_for(acts), depth_for(params), depth_for(layers + 1, 16))


def pe_variant(fault: str | None, memory: str = "generic") -> str:
    """How a co-simulated PE differs from the plain one (:func:`hw.build.pe_module_name`'s ``variant``)."""
    return "_".join(part for part in (fault, "ecp5mem" if memory == "ecp5" else None) if part)


def pe_verilog(cfg: PEConfig, fault: str | None = None, cache: Path | None = None,
               memory: str = "generic") -> tuple[str, str]:
    """(module name, Verilog) of the PE with an empty parameter memory (the testbench loads it), cached as
    :func:`hw.build.pe_verilog` caches it: the plain PE is the very module ``hw build`` writes.
    ``fault``: a deliberately wrong PE (:mod:`sim.faults`); ``memory="ecp5"``: the parameter memory of DP16KD
    block RAMs that ECP5 synthesis uses."""
    return build.pe_verilog(cfg, pe_variant(fault, memory), lambda: pe_class(fault)(cfg, None, memory=memory),
                            cache)


def testbench_parameters(cfg: PEConfig, depths: MemoryDepths) -> dict[str, int]:
    """The HDL parameters of ``yoloq_cosim_tb`` for a PE of ``cfg``."""
    check_testbench(cfg)
    return {"ACT_BITS": sum(f.width for f in cfg.stream.part(ACTS)),
            "WEIGHT_BITS": sum(f.width for f in cfg.stream.part(WEIGHTS)),
            "PARAM_WORD_BITS": cfg.word_layout.size, "PARAM_ADDR_BITS": cfg.addr_bits, "ACC_BITS": cfg.acc_bits,
            "WEIGHT_DEPTH": depths.weights, "ACT_DEPTH": depths.acts, "PARAM_DEPTH": depths.params,
            "PROGRAM_DEPTH": depths.program, "WATCHDOG_CYCLES": WATCHDOG_CYCLES}


def check_testbench(cfg: PEConfig) -> None:
    """The HDL connects every port of the PE's signature, no other, reads program entries in
    :data:`PROGRAM_FIELDS` order, and a beat's fields from the activation memory are its lowest bits."""
    text = TESTBENCH_HDL.read_text()
    instance = text[text.index("`YOLOQ_PE pe ("):]
    connected = set(re.findall(r"\.(\w+)\(", instance[:instance.index(");")])) - {"clk", "rst"}
    ports = {port_name(path) for path, member in pe_signature(cfg).members.flatten() if member.is_port}
    if connected != ports:
        raise ValueError(f"{TESTBENCH_HDL.name} connects {sorted(connected)}, the PE has {sorted(ports)}")
    fields = [name for name, _ in sorted(re.findall(r"wire \[31:0\] e_(\w+) = entry\[(\d+)\*32", text),
                                         key=lambda item: int(item[1]))]
    if fields != list(PROGRAM_FIELDS):
        raise ValueError(f"{TESTBENCH_HDL.name} reads program fields {fields}, sim.cosim writes {PROGRAM_FIELDS}")
    sources = [f.source for f in cfg.stream.fields]
    if sources != sorted(sources, key=lambda src: src != ACTS):
        raise ValueError(f"a beat's activation fields must be its lowest bits, got {sources}")
