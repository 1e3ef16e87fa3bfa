"""SymbiYosys proofs of the PE's result path (hw/formal.py): credits, queue order, output stream rules."""

from __future__ import annotations

import pytest

from amaranth import Mux

from hw.config import PEConfig
from hw.formal import CreditHarness, QueueHarness, prove, prove_result_path
from hw.result_queue import ResultQueue
from sw.intref.contract import ContractFormat


@pytest.mark.slow
def test_result_path_of_a_16_lane_pwlq_pe_is_proven(tmp_path):
    # 4-bit PWLQ (no zero-point; breakpoints of up to F + k - 1 = 19 bits), 16 lanes, a 3x3x512 fan-in: the
    # synthesised table's kind of PE
    cfg = PEConfig.generic(ContractFormat(4, True, 8, 16, 0, 3 * 3 * 512, 19), 16, "group", 4096)
    results = prove_result_path(cfg, tmp_path)
    for r in results:
        assert r.passed, f"{r.name}:\n{r.log[-2000:]}"
        assert "successful proof by k-induction" in r.log  # unbounded, not a bounded check


class _DuplicatingPipeline(CreditHarness):
    """A pipeline that writes some results twice: more results than credits taken."""

    def pipeline_output(self, pipe):
        return pipe[-1] | pipe[-2]


class _NoCredits(QueueHarness):
    """Writes allowed into a full queue."""

    def write_allowed(self, dut):
        return 1


class _ReadsAheadQueue(ResultQueue):
    """A queue that offers the slot after the oldest: results leave out of order."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        ahead = self.storage.read_port(domain="comb")
        m.d.comb += [ahead.addr.eq(Mux(self.read_ptr == self.depth - 1, 0, self.read_ptr + 1)),
                     self.output.payload.eq(ahead.data)]  # the later assignment wins
        return m


class _Reordering(QueueHarness):
    """The order is checked through one watched slot (any slot): a reordering queue must still fail."""

    def queue(self):
        return _ReadsAheadQueue(self.width, self.depth)


@pytest.mark.slow
@pytest.mark.parametrize("harness", [_DuplicatingPipeline(8, 4, 3), _NoCredits(8, 4), _Reordering(8, 4)],
                         ids=["credits", "queue", "queue order"])
def test_the_proofs_catch_a_broken_result_path(harness, tmp_path):
    result = prove(harness, "broken", "prove", 4, tmp_path)
    assert not result.passed and "Assert failed" in result.log
