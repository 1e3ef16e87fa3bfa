"""Processing elements and layer units to synthesise: one layer's, or one sized for every layer of a quantized
model.

A model-wide PE takes :func:`sw.intref.contract.superset_format` of its layers' contracts (so fan-in,
zero-point width and parameter depth are those the model really needs) and one addressing mode. A model-wide
layer unit adds an epilogue for that PE's accumulator (:func:`model_epilogue_format`) and the model's widest
layer (its parameter memory holds one word per output channel).
"""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog

from sw.atomic import write_text
from sw.intref.contract import LayerContract, superset_format
from sw.intref.stream import Mode, mode_for
from sw.quant.model import QuantizedModel

from .build import module_name
from sw.intref.epilogue import EpilogueFormat

from .config import PEConfig
from .epilogue import EpilogueConfig
from .layer_unit import LayerUnit, LayerUnitConfig
from .pe import ProcessingElement, verilog_ports


def model_pe_config(qm: QuantizedModel, lanes: int, act_bits: int, mode: Mode = Mode.GROUP) -> PEConfig:
    """A PE able to run every quantized layer of ``qm`` whose granularity uses ``mode``."""
    contracts = [LayerContract.from_record(n, r.qt, act_bits, qm.spec.scale_bits)
                 for n, r in qm.layers.items() if r.qt is not None and r.bits == qm.spec.bits]
    chosen = [c for c in contracts if mode_for(c.granularity) == mode] or contracts
    fmt = superset_format([c.fmt for c in chosen])
    groups = max(c.num_groups for c in chosen)
    return PEConfig.generic(fmt, lanes, mode, groups)


def model_epilogue_format(pe: PEConfig) -> EpilogueFormat:
    """The epilogue a model-wide layer unit is sized with, before any activation is calibrated: the PE's
    accumulator, ``K_c`` one bit wider than it (``-z_a sum(W)`` lies in the accumulator's range, the bias
    rounded to its scale adds at most about as much again), A-bit outputs and the contract's default
    pre-activation and multiplier widths. A calibrated model's real epilogues are checked against it
    (:meth:`hw.epilogue.EpilogueConfig.check_fits`) where one is built for them."""
    return EpilogueFormat(pe.acc_bits, pe.acc_bits + 1, pe.fmt.act_bits)


def model_layer_unit_config(qm: QuantizedModel, lanes: int, act_bits: int, mode: Mode = Mode.GROUP) -> LayerUnitConfig:
    """A layer unit able to run every quantized layer of ``qm`` whose granularity uses ``mode``."""
    pe = model_pe_config(qm, lanes, act_bits, mode)
    channels = max(r.qt.codes.shape[0] for r in qm.layers.values() if r.qt is not None)
    return LayerUnitConfig(pe, EpilogueConfig(model_epilogue_format(pe), channels))


def write_layer_unit(cfg: LayerUnitConfig, name: str, folder: Path, memory: str = "generic") -> tuple[Path, int]:
    """Verilog of a layer unit with empty memories; returns its path and the number of port bits."""
    unit = LayerUnit(cfg, memory=memory)
    source = verilog.convert(unit, name=name, emit_src=False)
    path = folder / f"{name}.v"
    write_text(path, source)
    return path, sum(p["width"] for p in verilog_ports(unit.signature) if p["name"] not in ("clk", "rst"))


def write_pe(cfg: PEConfig, name: str, folder: Path, init=None, memory: str = "generic") -> tuple[Path, int]:
    """Verilog of a PE; returns its path and the number of port bits (for pin-limited flows)."""
    pe = ProcessingElement(cfg, init, memory=memory)
    source = verilog.convert(pe, name=name, emit_src=False)
    path = folder / f"{name}.v"
    write_text(path, source)
    return path, sum(p["width"] for p in verilog_ports(pe.signature) if p["name"] not in ("clk", "rst"))


def layer_pe(contract: LayerContract, lanes: int) -> tuple[PEConfig, list[int], str]:
    from sw.intref.stream import StreamLayout

    layout = StreamLayout.build(contract, lanes)
    cfg = PEConfig.for_layer(layout)
    return cfg, cfg.param_init(layout), module_name(contract.name)
