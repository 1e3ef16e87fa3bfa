"""Synthesis flows on a small PE: every target runs and reports its resources; ECP5 reports an Fmax."""

from __future__ import annotations


import pytest

from hw.config import PEConfig
from hw.synth import synthesize
from hw.synth_configs import write_pe
from sw.cli import main
from sw.intref.contract import ContractFormat

SMALL = PEConfig.generic(ContractFormat(4, True, 8, 16, 0, 72, 19), lanes=2, mode="group", groups=64)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["generic", "ice40"])
def test_synthesis_only_targets(target, tmp_path):
    verilog, port_bits = write_pe(SMALL, "pe_small", tmp_path)
    r = synthesize(verilog, "pe_small", target, tmp_path / target, port_bits=port_bits)
    assert r.lut4 > 100 and r.ff > 50 and r.fmax_mhz is None
    if target == "ice40":
        assert "exceed" in r.note  # the PE has more port bits than an UP5K has pins


def test_synth_cli_rejects_bad_requests(tmp_path, capsys):
    for flag, value in (("--lanes", "0"), ("--bits", "9")):  # usage errors, named, before anything runs
        with pytest.raises(SystemExit) as e:
            main(["hw", "synth", flag, value])
        assert e.value.code == 2 and f"argument {flag}: must be from" in capsys.readouterr().err
    assert main(["hw", "synth-table", "--lanes", "x", "-o", str(tmp_path)]) == 2
    assert "--lanes: expected comma-separated integers" in capsys.readouterr().err


@pytest.mark.slow
def test_layer_unit_places_and_routes_on_ecp5_with_an_fmax_and_its_memories_in_block_ram(tmp_path):
    """The layer unit (the small PE + its epilogue) places and routes on the ECP5-85k and reports an Fmax and
    its critical path; the PE's and the epilogue's parameter memories and the activation table (2^12 x 8 bits:
    two DP16KD) are block RAMs, not logic. One place-and-route (about a minute of nextpnr) shows both: the
    PE's ECP5 build (``write_pe(memory="ecp5")``, as ``yoloq hw synth`` makes it) is the same PE module."""
    from hw.epilogue import EpilogueConfig
    from hw.layer_unit import LayerUnitConfig
    from hw.synth_configs import model_epilogue_format, write_layer_unit

    unit = LayerUnitConfig(SMALL, EpilogueConfig(model_epilogue_format(SMALL), 64))
    verilog, _ = write_layer_unit(unit, "unit_small", tmp_path, memory="ecp5")
    r = synthesize(verilog, "unit_small", "ecp5", tmp_path / "ecp5")
    assert r.device.startswith("LFE5U-85F") and r.bram >= 4 and r.dsp == 0 and r.ff < 20000
    assert 50 < r.fmax_mhz < 500 and r.critical_path
