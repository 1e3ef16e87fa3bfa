"""The ECP5 parameter memory (DP16KD block RAMs with output registers) equals the portable one, cycle for
cycle, in Icarus (sim/ecp5_memory.py), in every DP16KD geometry the PE uses."""

from __future__ import annotations

import pytest

from sim.ecp5_memory import compare


@pytest.mark.slow
@pytest.mark.parametrize("word_bits,depth", [(37, 100),      # x18 tiles, 3 columns: byte enables, OUTREG
                                             (20, 3000),     # x4 tiles (4096 words), 5 columns
                                             (3, 20000)])    # x1 tiles in 2 banks: the bank select
def test_ecp5_memory_matches_the_generic_one(word_bits, depth, tmp_path):
    result = compare(word_bits, depth, cycles=3000, seed=word_bits, workdir=tmp_path)
    assert result["compared"] >= 2990
    assert result["mismatches"] == 0, result["log"][-2000:]
