"""Simulate what is synthesised: the ECP5 parameter memory against the portable one, cycle for cycle.

:class:`hw.param_memory.ECP5ParamMemory` instantiates DP16KD block RAMs by hand (with output registers), so
the portable :class:`~hw.param_memory.ParamMemory` that every other simulation uses says nothing about it.
:func:`compare` converts both to Verilog and runs ``sim/hdl/param_memory_tb.v`` in Icarus: random writes,
reads and read enables, the two ``read_data`` compared every cycle. yosys's ECP5 cell library declares
DP16KD as a black box without behaviour, so the block RAM is ``sim/hdl/dp16kd_model.v``, a model of the
documented DP16KD (Lattice's ECP5 memory usage guide; yosys's own DP16KD mapping for the byte enables).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from amaranth.back import verilog

from hw.param_memory import ECP5ParamMemory, ParamMemory
from sw.atomic import write_text

from .runner import SimulatorError

HDL = Path(__file__).resolve().parent / "hdl"
TESTBENCH = HDL / "param_memory_tb.v"
DP16KD_MODEL = HDL / "dp16kd_model.v"  # yosys's ECP5 cell library has DP16KD only as a black box


def compare(word_bits: int, depth: int, cycles: int, seed: int, workdir: Path) -> dict:
    """Run the two memories side by side; {"compared": cycles compared, "mismatches": n, "log": text}."""
    for tool in ("iverilog", "vvp"):
        if shutil.which(tool) is None:
            raise SimulatorError(f"{tool} not on PATH: install the apt package iverilog (`make setup` does)")
    workdir = Path(workdir)
    addr_bits = max(1, (depth - 1).bit_length())
    write_text(workdir / "generic_memory.v", verilog.convert(ParamMemory(word_bits, depth), name="generic_memory",
                                                              emit_src=False))
    write_text(workdir / "ecp5_memory.v", verilog.convert(ECP5ParamMemory(word_bits, depth), name="ecp5_memory",
                                                          emit_src=False))
    params = {"WORD_BITS": word_bits, "ADDR_BITS": addr_bits, "DEPTH": depth, "CYCLES": cycles, "SEED": seed}
    build = subprocess.run(["iverilog", "-g2012", "-o", "tb.vvp", "-s", "param_memory_tb",
                            *(f"-Pparam_memory_tb.{k}={v}" for k, v in params.items()),
                            str(TESTBENCH), "generic_memory.v", "ecp5_memory.v", str(DP16KD_MODEL)],
                           cwd=workdir, capture_output=True, text=True)
    if build.returncode != 0:
        raise SimulatorError(f"iverilog failed on the memory testbench:\n{build.stderr[-3000:]}")
    run = subprocess.run(["vvp", "-n", "tb.vvp"], cwd=workdir, capture_output=True, text=True)
    found = re.search(r"param_memory_tb: compared (\d+) mismatches (\d+)", run.stdout)
    if run.returncode != 0 or found is None:
        raise SimulatorError(f"the memory testbench did not finish:\n{(run.stdout + run.stderr)[-3000:]}")
    return {"compared": int(found[1]), "mismatches": int(found[2]), "log": run.stdout}
