"""The simulator build itself, run by :func:`sim.runner.build` in a child process whose environment it chose.

A module of its own so that the child imports cocotb's runner and nothing else: :mod:`sim.runner` imports the
PE generator and with it torch and amaranth, about 2.5 CPU s at every build's start for nothing.
"""

from __future__ import annotations

import json
import sys


def build_here(spec: dict) -> None:
    from cocotb_tools.runner import get_runner

    get_runner(spec["sim"]).build(sources=spec["sources"], hdl_toplevel=spec["top"], build_dir=spec["build_dir"],
                                  build_args=spec["build_args"], parameters=spec["parameters"],
                                  defines=spec["defines"], waves=spec["waves"], timescale=("1ns", "1ps"),
                                  log_file=spec["log"])


if __name__ == "__main__":
    build_here(json.loads(sys.argv[1]))
