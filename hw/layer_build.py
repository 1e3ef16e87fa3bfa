"""Generate the Verilog of a layer unit (PE + integer epilogue, :mod:`hw.layer_unit`) for one quantized layer,
with its memory files; what ``yoloq hw build --unit layer`` writes.

Into a folder, beside what :mod:`hw.build` writes for the PE alone (``params.hex``, ``weights.hex``, same
content):

- ``<module>.v``: the layer unit, every memory initialised with the layer's contents;
- ``epilogue.hex``: one word per output channel, ``EpilogueFormat.param_fields`` (offset K_c, multiplier M_c,
  shift R_c) packed LSB first by :mod:`sw.intref.packing`;
- ``table.hex``: the activation table, ``2^pre_bits`` entries of ``out_bits``, entry ``i`` the output code
  of pre-activation code ``i - 2^(pre_bits - 1)``;
- ``manifest.json``: a PE's keys as :mod:`hw.build` writes them (one layer's) plus ``unit: "layer"``, the
  epilogue's format, fields, latency and files, and the layer unit's latency and ports.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from amaranth.back import verilog

from sw.atomic import write_json, write_text
from sw.intref.contract import LayerContract, signed_bits_for
from sw.intref.epilogue import EpilogueFormat, LayerEpilogue
from sw.intref.packing import bit_matrix, hex_lines
from sw.intref.stream import StreamLayout
from sw.quant.accounting import quantized_storage

from .build import storage_report
from .config import PEConfig
from .epilogue import EpilogueConfig
from .layer_unit import LayerUnit, LayerUnitConfig
from .pe import verilog_ports

UNITS = ("pe", "layer")  # what `yoloq hw build --unit` can write
def detect_epilogue(name: str, contract: LayerContract, offset: torch.Tensor) -> LayerEpilogue:
    """The epilogue a Detect conv's layer unit runs with. Its output is not requantized: the box decoder
    dequantizes ``t = acc + K_c`` (:class:`sw.intref.intnet.HeadDequant`), which the unit's ``sum`` output
    is. So only the offsets ``K_c`` matter; multipliers, shifts and the table are zero (unused)."""
    offset = offset.to(torch.int64)
    fmt = EpilogueFormat(contract.fmt.acc_bits, signed_bits_for(int(offset.min()), int(offset.max())),
                         contract.fmt.act_bits)
    zeros = torch.zeros_like(offset)
    return LayerEpilogue(name, fmt, offset, zeros, zeros.clone(), torch.zeros(fmt.lut_entries, dtype=torch.int64),
                         "identity")


def network_epilogues(net, names: list[str]) -> dict[str, LayerEpilogue]:
    """Each named conv's epilogue in an integer network (:class:`sw.intref.intnet.IntegerNetwork`); a Detect
    conv's is :func:`detect_epilogue`."""
    out = {}
    for name in names:
        layer = net.layers[name]
        out[name] = layer.epilogue if layer.head is None else detect_epilogue(name, layer.contract, layer.head.offset)
    return out


def unit_module_name(layer: str) -> str:
    """``model.2.cv1.conv`` -> ``yoloq_unit_model_2_cv1_conv``."""
    return "yoloq_unit_" + re.sub(r"[^0-9A-Za-z_]", "_", layer)


def epilogue_manifest(cfg: EpilogueConfig, ep: LayerEpilogue) -> dict:
    f = cfg.fmt
    return {"format": asdict(f), "activation": ep.activation, "channels": ep.channels,
            "latency_cycles": cfg.latency, "param_word_bits": cfg.param_layout.size,
            "param_word_fields": [asdict(x) for x in f.param_fields], "params_hex": "epilogue.hex",
            "table_hex": "table.hex", "table_entries": f.lut_entries, "table_word_bits": f.out_bits,
            "sum_bits": f.sum_bits, "product_bits": f.product_bits,
            "output_fields": {"code": f.out_bits, "sum": f.sum_bits},
            "storage_bits": ep.channels * cfg.param_layout.size + f.lut_entries * f.out_bits}


def build_layer_unit(contract: LayerContract, qt, ep: LayerEpilogue, lanes: int, out: Path) -> dict:
    """Write one layer's layer-unit Verilog, memory files and manifest into ``out``; returns the manifest."""
    if ep.channels != contract.shape[0] or ep.fmt.acc_bits != contract.fmt.acc_bits:
        raise ValueError(f"{contract.name}: epilogue for {ep.channels} channels of {ep.fmt.acc_bits}-bit "
                         f"accumulators, layer has {contract.shape[0]} and {contract.fmt.acc_bits}")
    out = Path(out)
    layout = StreamLayout.build(contract, lanes)
    cfg = LayerUnitConfig(PEConfig.for_layer(layout), EpilogueConfig.for_layer(ep))
    unit = LayerUnit(cfg, cfg.pe.param_init(layout), cfg.epilogue.param_init(ep), cfg.epilogue.table_init(ep))
    name = unit_module_name(contract.name)
    write_text(out / f"{name}.v", verilog.convert(unit, name=name, emit_src=False))
    write_text(out / "params.hex", hex_lines(bit_matrix(*layout.param_fields(cfg.pe.param_format))).decode())
    weight_bits = bit_matrix(*layout.weight_fields(cfg.pe.stream))
    write_text(out / "weights.hex", hex_lines(weight_bits).decode())
    write_text(out / "epilogue.hex", hex_lines(cfg.epilogue.param_bits(ep)).decode())
    write_text(out / "table.hex", hex_lines(cfg.epilogue.table_bits(ep)).decode())
    storage = storage_report(contract, cfg.pe, quantized_storage(qt, contract.fmt.scale_bits))
    if not storage["agrees_with_quantizer"]:
        raise AssertionError(f"{contract.name}: hardware storage disagrees with the quantizer: {storage}")
    pe = cfg.pe
    manifest = {
        "layer": contract.name, "unit": "layer", "module": name, "verilog": f"{name}.v",
        "contract": contract.summary(), "latency_cycles": cfg.latency,
        "pe": {"lanes": pe.lanes, "mode": pe.mode, "latency_cycles": pe.latency, "acc_bits": pe.acc_bits,
               "beat_bits": pe.beat_layout.size, "param_word_bits": pe.word_layout.size,
               "param_words": pe.param_words, "addr_bits": pe.addr_bits,
               "beat_fields": [asdict(f) for f in pe.stream.fields],
               "param_word_fields": {"groups_per_word": pe.param_format.groups_per_word,
                                     "group_fields": [asdict(f) for f in pe.param_format.group_fields]}},
        "epilogue": epilogue_manifest(cfg.epilogue, ep),
        "stream": {"beats_per_dot_product": layout.beats, "lane_utilisation": round(layout.utilisation, 4),
                   "weights_hex": "weights.hex", "weight_beat_bits": weight_bits.shape[1], "params_hex": "params.hex",
                   "order": "per output position, its output channels in order (the epilogue counts channels)"},
        "ports": verilog_ports(unit.signature), "storage": storage,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _build_one(contract, qt, ep, lanes, out, lint_it) -> dict:
    manifest = build_layer_unit(contract, qt, ep, lanes, out)
    if lint_it:
        from .lint import lint

        rc, messages = lint(Path(out) / manifest["verilog"])
        manifest["lint"] = {"exit_code": rc, "messages": messages}
    return manifest


def build_layer_units(layers: list[tuple[LayerContract, object, LayerEpilogue, Path]], lanes: int, *,
                      lint: bool = False, jobs: int | None = None) -> list[dict]:
    """:func:`build_layer_unit` for every (contract, record, epilogue, folder), in spawned workers (forking after
    torch has started its thread pool can hang the child); manifests in input order."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(layers)))
    tasks = [(c, qt, ep, lanes, Path(folder), lint) for c, qt, ep, folder in layers]
    if jobs == 1:
        return [_build_one(*t) for t in tasks]
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return [f.result() for f in [pool.submit(_build_one, *t) for t in tasks]]
