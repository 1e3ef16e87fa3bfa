"""Co-simulate layers through the RTL and compare every accumulator with ``sw``: the engine of ``yoloq hw cosim``.

Given :class:`~sim.stimulus.LayerCase` s (from a real network, :mod:`sim.capture`, or built by hand for
edge cases), :func:`cosimulate`

1. plans the PEs to build (:func:`plan_builds`). Per-layer exact builds (``exact=True``: the PE that
   ``yoloq hw build`` writes for the layer, :meth:`hw.config.PEConfig.for_layer`) cost one simulator
   compilation per layer, which for Verilator and 92 YOLOv7 layers is far too slow. The contract's widths
   are upper bounds: a PE elaborated with the widest zero-point, the largest fan-in (hence accumulator) and
   the deepest parameter memory of a set of layers computes exactly the same integers for each of them
   (values are sign-extended, never truncated). So by default one *superset* PE is built per group of
   layers that share what does change the datapath (addressing mode, code bits k, PWLQ or not, activation
   and scale bits), and each layer's parameters are written through the PE's ``params`` port before its
   beats. A whole model is one or two builds (three with ``--first-last-8bit``). What a superset build
   cannot show is that an exact-width PE's accumulator does not overflow; the exact builds in the test
   suite cover that (including the contract's adversarial corner at the accumulator bound);
2. writes each build's memories and program (:mod:`sim.stimulus`, :mod:`sim.wrapper`) into a run folder;
3. builds (cached) and runs the cocotb testbench (:mod:`sim.runner`, :mod:`sim.tb_pe`), up to ``jobs``
   simulations at once, and collects the reports: MACs verified, mismatches (layer, output channel,
   position, expected, got), timing.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hw.build import group_by_kind
from hw.config import PEConfig
from hw.epilogue import EpilogueConfig
from hw.layer_unit import LayerUnitConfig
from sw.errors import YoloqError
from sw.intref.bounds import LANES_RANGE
from sw.intref.epilogue import superset_epilogue_format
from sw.intref.packing import bit_matrix, hex_lines
from sw.intref.stream import StreamLayout, mode_for

from . import DEFAULT_LANES, runner  # DEFAULT_LANES: defined with the package, for the CLI
from .ecp5_memory import DP16KD_MODEL
from .faults import EPILOGUE_FAULTS, FAULTS
from .stimulus import LayerCase
from .tb_pe import EXPECTED, MANIFEST, REPORT, RESULTS, compare, format_mismatch
from .wrapper import (PE_MACRO, PROGRAM_FIELD_BITS, PROGRAM_FIELDS, TESTBENCH_HDL, TOP, UNIT_MACRO, MemoryDepths,
                      pe_config, pe_ports, pe_verilog, testbench_parameters)

MEMORIES = ("generic", "ecp5")
UNITS = ("pe", "layer")


class CosimError(YoloqError):
    """An invalid co-simulation request (unknown layer, bad --positions, lanes...)."""


@dataclass(frozen=True)
class Options:
    sim: str = "icarus"
    lanes: int = DEFAULT_LANES
    exact: bool = False                # one exact-width PE per layer instead of superset PEs
    seed: int = 1                      # the testbench's idle/stall generator
    idle: int = 32                     # P(no beat offered in a cycle) = idle / 256
    stall: int = 32                    # P(results.ready low in a cycle) = stall / 256
    fault: str | None = None           # a deliberately wrong PE (sim.faults.FAULTS)
    memory: str = "generic"            # the PE's parameter memory: generic, or ecp5 (DP16KD block RAMs, modelled)
    jobs: int = 2                      # simulations run at once
    cache: Path | None = None          # build cache (default out/sim_build)
    work: Path | None = None           # run folders are kept here (default: a temporary folder)
    waves: Path | None = None          # record a trace of each build's run into this folder (build<i>.fst/.vcd)
    progress: bool = True
    unit: str = "pe"                   # pe: accumulators; layer: the layer unit's output codes (cases with epilogues)

    def validate(self) -> None:
        runner.check_simulator(self.sim)
        lo, hi = LANES_RANGE
        if not lo <= self.lanes <= hi:
            raise CosimError(f"lanes must be from {lo} to {hi}, got {self.lanes}")
        if not (0 <= self.idle <= 255 and 0 <= self.stall <= 255):
            raise CosimError(f"idle and stall are rates out of 256, from 0 to 255; got {self.idle}, {self.stall}")
        if self.unit not in UNITS:
            raise CosimError(f"unknown unit {self.unit!r}; choose one of {', '.join(UNITS)}")
        faults = {**FAULTS, **EPILOGUE_FAULTS} if self.unit == "layer" else FAULTS
        if self.fault is not None and self.fault not in faults:
            raise CosimError(f"unknown fault {self.fault!r} for the {self.unit} unit; choose one of {', '.join(faults)}")
        if self.memory not in MEMORIES:
            raise CosimError(f"unknown memory {self.memory!r}; choose one of {', '.join(MEMORIES)}")
        if self.jobs < 1:
            raise CosimError(f"jobs must be at least 1, got {self.jobs}")


@dataclass
class Build:
    """One PE (or layer unit) configuration and the layers it runs."""

    cfg: PEConfig | LayerUnitConfig
    items: list[tuple[LayerCase, StreamLayout]]

    @property
    def unit(self) -> bool:
        return isinstance(self.cfg, LayerUnitConfig)

    @property
    def pe(self) -> PEConfig:
        return pe_config(self.cfg)

    @property
    def label(self) -> str:
        f = self.pe.fmt
        kind = f"{f.weight_bits}-bit {'PWLQ' if f.pwlq else 'uniform'}" + (", layer unit" if self.unit else "")
        return f"{self.pe.mode} mode, {kind}, {len(self.items)} layer{'s' * (len(self.items) != 1)}"


@dataclass
class CosimResult:
    """``seconds`` is the wall time charged for the MACs: the co-simulation alone (plan, stimulus, builds,
    simulation, comparison), or a caller's wider span (``yoloq hw cosim``: the whole command)."""

    macs: int
    mismatches: int
    seconds: float
    results: int
    layers: list[dict]
    listed: list[dict]
    problems: list[str]
    builds: list[dict]
    timing: dict = field(default_factory=dict)

    outputs_checked: int = 0           # layer unit: output codes (or Detect sums) compared

    @property
    def macs_per_s(self) -> float:
        return self.macs / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and not self.problems

    def as_json(self) -> dict:
        cosim = self.timing.get("cosim_wall", self.seconds)
        return {"macs": self.macs, "mismatches": self.mismatches, "seconds": round(self.seconds, 3),
                "outputs_checked": self.outputs_checked,
                "macs_per_s": round(self.macs_per_s, 1), "results": self.results,
                "cosim_seconds": round(cosim, 3), "cosim_macs_per_s": round(self.macs / cosim, 1) if cosim else 0.0,
                "timing": self.timing,
                "builds": self.builds, "layers": self.layers, "mismatch_examples": self.listed,
                "problems": self.problems}


# ---- planning -------------------------------------------------------------------------------------------------
def plan_builds(cases: list[LayerCase], lanes: int, exact: bool = False, unit: str = "pe") -> list[Build]:
    """Exact: one PE per layer. Otherwise one superset PE per :func:`hw.build.pe_kind` (mode, lanes, k, PWLQ,
    A, F), in first-seen order: the same modules ``hw build`` writes. ``unit="layer"``: each PE followed by the
    epilogue that covers its layers' (grouped also by the epilogue's code widths, every other width the
    largest: :func:`~sw.intref.epilogue.superset_epilogue_format`), as wide as the PE's accumulator."""
    if unit == "layer":
        for case in cases:
            if case.epilogue is None:
                raise CosimError(f"{case.name}: no epilogue to co-simulate the layer unit with")
    layouts = [StreamLayout.build(case.contract, lanes, mode_for(case.contract.granularity)) for case in cases]
    epilogues = [case.epilogue for case in cases] if unit == "layer" else None
    groups = [[i] for i in range(len(cases))] if exact else list(group_by_kind(layouts, epilogues).values())
    plan = []
    for indices in groups:
        chosen = [layouts[i] for i in indices]
        cfg = PEConfig.for_layer(chosen[0]) if exact else PEConfig.superset(chosen)
        for lay in chosen:
            cfg.check_fits(lay)
        items = [(cases[i], layouts[i]) for i in indices]
        if unit == "layer":
            fmt = superset_epilogue_format([case.epilogue.fmt for case, _ in items])
            fmt = replace(fmt, acc_bits=max(fmt.acc_bits, cfg.acc_bits))
            epilogue = EpilogueConfig(fmt, max(case.epilogue.channels for case, _ in items))
            for case, _ in items:
                epilogue.check_fits(case.epilogue)
            cfg = LayerUnitConfig(cfg, epilogue)
        plan.append(Build(cfg, items))
    return plan


# ---- run folder -----------------------------------------------------------------------------------------------
def write_run(build: Build, run_dir: Path) -> tuple[MemoryDepths, dict]:
    """The memories, program, expected values and manifest of one build, in ``run_dir``; memory depths and
    the number of words in each file."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = build.pe
    stream = cfg.stream
    bases = {"weights": 0, "acts": 0, "params": 0, "epilogue": 0, "table": 0}
    program, expected, layers = [], [], []
    offset = 0
    with open(run_dir / "weights.hex", "wb") as wf, open(run_dir / "acts.hex", "wb") as af, \
            open(run_dir / "params.hex", "wb") as pf, open(run_dir / "epilogue.hex", "wb") as ef, \
            open(run_dir / "table.hex", "wb") as tf:
        for case, layout in build.items:
            entry = {"param_base": bases["params"], "weight_base": bases["weights"], "act_base": bases["acts"],
                     "beats": layout.beats, "outs": case.contract.shape[0], "positions": len(case.columns),
                     "epilogue_base": bases["epilogue"], "table_base": bases["table"]}
            if build.unit:  # the epilogue's parameter words (at the build's widths) and its table
                ep_cfg = build.cfg.epilogue
                ep_cfg.check_fits(case.epilogue)
                ef.write(hex_lines(ep_cfg.param_bits(case.epilogue)))
                tf.write(hex_lines(ep_cfg.table_bits(case.epilogue)))
                bases["epilogue"] += case.epilogue.channels
                bases["table"] += case.epilogue.fmt.lut_entries
            for key, fh, (fields, rows) in (("weights", wf, layout.weight_fields(stream)),
                                            ("acts", af, layout.act_fields(case.columns, stream)),
                                            ("params", pf, layout.param_fields(cfg.param_format))):
                _write_hex(fh, fields, rows)
                bases[key] += rows
            entry["param_count"] = layout.param_words
            program.append([entry[name] for name in PROGRAM_FIELDS])
            flat = np.asarray(case.outputs if build.unit else case.expected, dtype=np.int64).reshape(-1)
            expected.append(flat)
            layers.append({"name": case.name, "outs": case.contract.shape[0], "fan_in": case.contract.fmt.fan_in,
                           "positions": [_label(p) for p in case.positions], "offset": offset, "count": len(flat),
                           "compare": case.compare if build.unit else "acc"})
            offset += len(flat)
    program.append([0] * len(PROGRAM_FIELDS))  # outs = 0: the end
    prog = np.array(program, dtype=np.int64)
    (run_dir / "program.hex").write_bytes(hex_lines(bit_matrix(
        [(prog[:, i:i + 1], PROGRAM_FIELD_BITS) for i in range(len(PROGRAM_FIELDS))], len(prog))))
    np.save(run_dir / EXPECTED, np.concatenate(expected) if expected else np.zeros(0, np.int64))
    interfaces: dict[str, dict[str, str]] = {}  # the PE's ports by interface and member, for the testbench
    for path, name in pe_ports(build.cfg).items():  # (a plain port, e.g. the unit's ``channels``: its own name)
        interfaces.setdefault(path[0], {})["_".join(path[1:]) or path[0]] = name
    (run_dir / MANIFEST).write_text(json.dumps({"layers": layers, "pe_ports": interfaces, "unit": build.unit}))
    (run_dir / RESULTS).unlink(missing_ok=True)
    (run_dir / REPORT).unlink(missing_ok=True)
    words = {"weights_words": bases["weights"], "acts_words": bases["acts"], "params_words": bases["params"],
             "program_words": len(program)}
    if build.unit:
        words.update({"epilogue_words": bases["epilogue"], "table_words": bases["table"]})
    return MemoryDepths.for_sizes(bases["weights"], bases["acts"], bases["params"], len(build.items),
                                  bases["epilogue"], bases["table"]), words


def _write_hex(fh, fields: list, rows: int, chunk: int = 1 << 16) -> None:
    """``$readmemh`` lines of ``rows`` words, a chunk of rows at a time (a big layer's bit matrix is ~GB)."""
    fields = [(np.asarray(v).reshape(rows, -1), bits) for v, bits in fields]
    for start in range(0, rows, chunk):
        part = [(v[start:start + chunk], bits) for v, bits in fields]
        fh.write(hex_lines(bit_matrix(part, min(chunk, rows - start))))


def _label(position):
    if isinstance(position, (tuple, list)):
        return [int(v) for v in position]
    return int(position)


# ---- running --------------------------------------------------------------------------------------------------
class _LayerProgress:
    """Advances a tqdm bar as the testbench finishes layers (it flushes results.txt after each)."""

    def __init__(self, bar, path: Path, layers: int):
        self.bar, self.path, self.layers, self.done = bar, path, layers, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.wait(0.5):
            self.update()

    def update(self, finished: bool = False):
        n = self.layers if finished else self._completed()
        if n > self.done:
            self.bar.update(n - self.done)
            self.done = n

    def _completed(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.path) - 256))
                lines = f.read().split(b"\n")
            return int(lines[-2].split()[0]) if len(lines) >= 2 and lines[-2] else 0
        except (OSError, ValueError, IndexError):
            return 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.update(finished=exc[0] is None)


def _run_build(index: int, build: Build, opts: Options, work: Path, bar, timing: dict, lock) -> dict:
    run_dir = work / f"build{index}"
    t0 = time.perf_counter()
    depths, words = write_run(build, run_dir)
    t1 = time.perf_counter()
    pe_name, pe_src = pe_verilog(build.cfg, opts.fault, opts.cache or runner.cache_dir(), opts.memory)
    sources = {f"{pe_name}.v": pe_src, f"{TOP}.v": TESTBENCH_HDL.read_text()}
    if opts.memory == "ecp5":
        sources["dp16kd_model.v"] = DP16KD_MODEL.read_text()
    defines = {PE_MACRO: pe_name, **({UNIT_MACRO: 1} if build.unit else {})}
    build_dir = runner.build(opts.sim, sources, opts.cache, public=tuple(pe_ports(build.cfg).values()),
                             parameters=testbench_parameters(build.cfg, depths), defines=defines,
                             waves=opts.waves is not None)
    t2 = time.perf_counter()
    with _LayerProgress(bar, run_dir / RESULTS, len(build.items)):
        outcome = runner.run(opts.sim, build_dir, run_dir, {"tb_seed": opts.seed, "idle": opts.idle,
                                                             "stall": opts.stall, **words},
                             waves=opts.waves is not None)
    t3 = time.perf_counter()
    waves = None
    if outcome.waves is not None:
        Path(opts.waves).mkdir(parents=True, exist_ok=True)
        waves = Path(opts.waves) / f"build{index}{outcome.waves.suffix}"
        os.replace(outcome.waves, waves)
    report_path = run_dir / REPORT
    # the testbench writes the report; if the simulation ended before it could, compare here
    report = json.loads(report_path.read_text()) if report_path.exists() else compare(run_dir)
    if not report_path.exists():
        report["problems"].append(f"the testbench wrote no report; see {outcome.log}")
    with lock:
        for key, dt in (("stimulus", t1 - t0), ("build", t2 - t1), ("simulate", t3 - t2)):
            timing[key] = timing.get(key, 0.0) + dt
    return {"label": build.label, "pe": pe_name, "lanes": build.pe.lanes, "mode": build.pe.mode,
            "acc_bits": build.pe.acc_bits, "unit": "layer" if build.unit else "pe", "build_dir": str(build_dir), "run_dir": str(run_dir),
            "passed": outcome.passed, "cycles": report.get("cycles"), "beats": report.get("beats"),
            "waves": str(waves) if waves else None, "protocol_errors": report.get("protocol_errors"),
            "sim_seconds": round(t3 - t2, 3), "report": report}


def cosimulate(cases: list[LayerCase], opts: Options = Options()) -> CosimResult:
    """Run ``cases`` through the RTL in ``opts.sim``; every accumulator compared with the expected one."""
    opts.validate()
    if not cases:
        raise CosimError("no layers to co-simulate")
    t0 = time.perf_counter()
    plan = plan_builds(cases, opts.lanes, opts.exact, opts.unit)
    timing: dict = {"plan": time.perf_counter() - t0}
    lock = threading.Lock()
    tmp = None
    if opts.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="yoloq-cosim-")
        work = Path(tmp.name)
    else:
        work = Path(opts.work)
    try:
        with tqdm(total=len(cases), desc=f"cosim {opts.sim}", unit="layer", disable=not opts.progress,
                  leave=False) as bar, ThreadPoolExecutor(max_workers=opts.jobs) as pool:
            futures = [pool.submit(_run_build, i, b, opts, work, bar, timing, lock) for i, b in enumerate(plan)]
            builds = [f.result() for f in futures]
    finally:
        if tmp is not None:
            tmp.cleanup()
    seconds = time.perf_counter() - t0
    timing["cosim_wall"] = seconds
    reports = [b.pop("report") for b in builds]
    problems = [p for r in reports for p in r["problems"]]
    for b, r in zip(builds, reports):
        if not b["passed"] and not r["problems"] and not r["mismatches"]:
            problems.append(f"{b['label']}: the testbench failed (watchdog or results left in flight); "
                            f"see {b['run_dir']}/sim.log")
    timing = {k: round(v, 3) for k, v in timing.items()}
    return CosimResult(macs=sum(r["macs"] for r in reports), mismatches=sum(r["mismatches"] for r in reports),
                       seconds=seconds, results=sum(r["results"] for r in reports),
                       layers=[lay for r in reports for lay in r["layers"]],
                       listed=[row for r in reports for row in r["listed"]], problems=problems,
                       builds=builds, timing=timing, outputs_checked=sum(r["results"] for r in reports))


def summary(result: CosimResult, sim: str) -> str:
    """The lines ``yoloq hw cosim`` prints."""
    if any(b.get("unit") == "layer" for b in result.builds):
        lines = [f"{sim}: layer unit, {result.outputs_checked:,} outputs checked ({result.macs:,} MACs), "
                 f"{result.mismatches} mismatches, {result.seconds:.1f} s"]
    else:
        lines = [f"{sim}: {result.macs:,} MACs verified in {result.results:,} dot products, "
                 f"{result.mismatches} mismatches, {result.seconds:.1f} s, {result.macs_per_s:,.0f} MACs/s"]
    t = result.timing
    if "cosim_wall" in t:
        parts = ", ".join(f"{k} {t[k]:.1f} s" for k in ("quantize", "capture") if t.get(k))
        lines.append(f"  {parts + '; ' if parts else ''}co-simulation {t['cosim_wall']:.1f} s "
                     f"({result.macs / max(t['cosim_wall'], 1e-9):,.0f} MACs/s; over {len(result.builds)} PE builds: "
                     f"elaborate and compile {t.get('build', 0):.1f} s, simulate {t.get('simulate', 0):.1f} s)")
    for b in result.builds:
        lines.append(f"  {b['label']}: PE {b['lanes']} lanes, acc {b['acc_bits']} bits, {b['cycles']} cycles "
                     f"in {b['sim_seconds']:.1f} s" + (f"; trace {b['waves']}" if b.get("waves") else ""))
    for row in result.listed[:20]:
        lines.append(f"  mismatch: {format_mismatch(row)}")
    for p in result.problems:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)
