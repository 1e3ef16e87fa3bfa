"""cocotb testbench of the processing element inside ``yoloq_cosim_tb`` (see :mod:`sim.wrapper`).

The HDL driver streams every beat from preloaded memories, so nothing here runs per cycle: the test starts
the clock (cocotb's C-level GPI clock), resets, waits for ``done``, then compares every result the
testbench wrote (``results.txt``) with ``sw``'s reference accumulators (``expected.npy``), layer by layer,
and writes ``report.json``. A mismatch names the layer, output channel, position, expected and got.

Run folder contents (written by :mod:`sim.cosim`): ``weights.hex``, ``acts.hex``, ``params.hex``,
``program.hex`` (the memories), ``cosim.json`` (per layer: name, output channels, position labels,
offset into ``expected.npy``) and ``expected.npy`` (int64, per layer position-major then output channel:
the order in which the driver issues the dot products).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

MANIFEST = "cosim.json"
EXPECTED = "expected.npy"
RESULTS = "results.txt"
REPORT = "report.json"
MISMATCHES_LISTED = 50


def read_results(path: Path, layers: int, columns: list[int] | None = None,
                 width: int = 2) -> tuple[list[np.ndarray], str | None]:
    """Per layer, the values in the order they came out; and a problem description, if any. A line is
    ``<layer> <value>...`` of ``width`` numbers (PE: the accumulator; layer unit: code, sum); ``columns``
    picks each layer's value (default: the first after the layer)."""
    text = Path(path).read_text() if Path(path).exists() else ""
    tokens = text.split()
    if len(tokens) % width:
        return [np.zeros(0, np.int64)] * layers, f"{path}: truncated line"
    try:
        pairs = np.array(tokens, dtype=np.int64).reshape(-1, width)
    except ValueError:  # an X or Z in a result prints as x/z
        bad = next(t for t in tokens if not t.lstrip("-").isdigit())
        return [np.zeros(0, np.int64)] * layers, f"{path}: non-numeric result {bad!r} (X or Z on results.payload)"
    columns = columns or [1] * layers
    out = [pairs[pairs[:, 0] == i, columns[i]] for i in range(layers)]
    stray = int((pairs[:, 0] >= layers).sum())
    return out, (f"{stray} results after the last layer" if stray else None)


def compare(run_dir: Path, listed: int = MISMATCHES_LISTED) -> dict:
    """Compare ``results.txt`` with ``expected.npy``; the report that ``report.json`` holds."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    expected = np.load(run_dir / EXPECTED)
    layers = manifest["layers"]
    unit = manifest.get("unit", False)  # layer unit: lines are "<layer> <code> <sum>"
    columns = [2 if layer.get("compare") == "sum" else 1 for layer in layers]
    got, problem = read_results(run_dir / RESULTS, len(layers), columns, 3 if unit else 2)
    problems = [problem] if problem else []
    mismatches, listed_rows, results, macs = 0, [], 0, 0
    per_layer = []
    for layer, values in zip(layers, got):
        outs, n = layer["outs"], layer["count"]
        want = expected[layer["offset"]:layer["offset"] + n]
        m = min(len(values), n)
        bad = np.flatnonzero(values[:m] != want[:m])
        missing = n - m
        if len(values) != n:
            problems.append(f"{layer['name']}: {len(values)} results, expected {n}")
        mismatches += len(bad) + missing
        results += m
        macs += m * layer["fan_in"]
        per_layer.append({"name": layer["name"], "results": int(m), "mismatches": int(len(bad) + missing)})
        for k in bad[:max(0, listed - len(listed_rows))]:
            p, o = divmod(int(k), outs)
            listed_rows.append({"layer": layer["name"], "out_channel": o, "position": layer["positions"][p],
                                "expected": int(want[k]), "got": int(values[k])})
    return {"results": int(results), "expected_results": int(len(expected)), "macs": int(macs),
            "mismatches": int(mismatches), "listed": listed_rows, "problems": problems, "layers": per_layer}


def format_position(position) -> str:
    """(image, y, x) from a network capture, else the row index of the case's columns."""
    if isinstance(position, (list, tuple)) and len(position) == 3:
        return f"image {position[0]} (y {position[1]}, x {position[2]})"
    return str(position)


def format_mismatch(row: dict) -> str:
    return (f"{row['layer']}: output channel {row['out_channel']}, position {format_position(row['position'])}: "
            f"expected {row['expected']}, got {row['got']}")


# ---- the cocotb side (imported only inside the simulator) ---------------------------------------------------
def _bus(dut, ports: dict[str, str]):
    """Handles of one interface of the PE, member -> handle, as cocotbext-axi's buses do; the port names
    come from the PE's signature (``cosim.json``'s ``pe_ports``, written by :mod:`sim.cosim`)."""
    from types import SimpleNamespace

    return SimpleNamespace(**{member: getattr(dut, name) for member, name in ports.items()})


class CosimTB:
    """``yoloq_cosim_tb``: the PE (``pe``) and its stimulus-memory driver. Clock, reset, wait, check idle."""

    PERIOD_NS = 10

    def __init__(self, dut, pe_ports: dict[str, dict[str, str]]):
        self.dut = dut
        self.log = dut._log
        self.elements = _bus(dut.pe, pe_ports["elements"])
        self.results = _bus(dut.pe, pe_ports["results"] if "results" in pe_ports else pe_ports["outputs"])
        self.params = _bus(dut.pe, pe_ports["params"])

    async def reset(self, cycles: int = 3) -> None:
        from cocotb.triggers import ClockCycles

        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, cycles)
        self.dut.rst.value = 0

    async def run(self) -> dict:
        """Run the preloaded program to its end; the driver's counters."""
        from cocotb.clock import Clock
        from cocotb.triggers import ClockCycles, RisingEdge

        Clock(self.dut.clk, self.PERIOD_NS, unit="ns", impl="gpi").start()
        await self.reset()
        t0 = time.perf_counter()
        await RisingEdge(self.dut.done)
        seconds = time.perf_counter() - t0
        await ClockCycles(self.dut.clk, 2)
        stats = {"cycles": int(self.dut.cycles.value), "beats": int(self.dut.beats_sent.value),
                 "results": int(self.dut.results_seen.value), "timed_out": bool(self.dut.timed_out.value),
                 "protocol_errors": int(self.dut.protocol_errors.value),
                 "sim_seconds": seconds,
                 # after the last result nothing may remain in flight: no beat offered, no result pending
                 "idle_at_end": not int(self.elements.valid.value) and not int(self.results.valid.value)}
        self.log.info("%(cycles)d cycles, %(beats)d beats, %(results)d results in %(sim_seconds).2f s", stats)
        return stats


try:
    import cocotb
except ImportError:  # the comparison helpers above are used outside the simulator too
    cocotb = None

if cocotb is not None:
    @cocotb.test()
    async def cosim(dut):
        """Every accumulator the RTL produces equals sw's; none missing, none extra, no hang."""
        tb = CosimTB(dut, json.loads(Path(MANIFEST).read_text())["pe_ports"])
        stats = await tb.run()
        report = compare(Path.cwd())
        report.update(stats)
        Path(REPORT).write_text(json.dumps(report, indent=1))
        for row in report["listed"][:10]:
            tb.log.error("mismatch: %s", format_mismatch(row))
        for problem in report["problems"]:
            tb.log.error("%s", problem)
        assert not stats["timed_out"], "the PE stopped accepting beats or producing results (watchdog)"
        assert stats["protocol_errors"] == 0, \
            f"the PE's results stream withdrew or changed an offered result {stats['protocol_errors']} times"
        assert stats["idle_at_end"], "beats or results still in flight after the last expected result"
        assert report["mismatches"] == 0 and not report["problems"], \
            f"{report['mismatches']} mismatches in {report['results']} results"
