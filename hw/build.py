"""Generate the Verilog of a processing element configured for one quantized layer, with its memory files.

For a layer, :func:`build_layer` writes into a folder:

- ``<module>.v``: the PE (Amaranth -> Verilog), its parameter memory initialised with the layer's
  parameters;
- ``params.hex``: the same parameter words for ``$readmemh`` (one word per line, LSB-first packing of
  :attr:`hw.config.PEConfig.word_layout`);
- ``weights.hex``: the layer's packed weight codes in stream order, one beat per line: for each output
  channel, its beats' code, tail-bit, address and last fields (the beat layout without the activations);
- ``manifest.json``: ports, widths, latency, stream layout, and storage bits, checked against the
  quantizer's memory accounting.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from amaranth.back import verilog

from sw.atomic import write_json, write_text
from sw.intref.contract import LayerContract
from sw.intref.packing import bit_matrix, hex_lines, words_of
from sw.intref.stream import StreamLayout
from sw.quant.accounting import SHIFT_BITS, quantized_storage

from .config import PEConfig
from .pe import ProcessingElement, verilog_ports


# The modules whose source decides the PE's Verilog for a given config (with Amaranth's version).
GENERATOR_MODULES = ("hw.pe", "hw.arith", "hw.config", "hw.param_memory", "hw.result_queue",
                     "sw.intref.contract", "sw.intref.stream", "sw.intref.packing")


def generator_digest() -> str:
    """A digest of everything a PE's Verilog depends on besides its config: the generator's sources and
    Amaranth's version. Caches of generated or synthesised PEs key on it, so a changed design is never
    served from a stale entry."""
    import amaranth

    h = hashlib.sha256(amaranth.__version__.encode())
    for name in GENERATOR_MODULES:
        h.update(name.encode() + Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def module_name(layer: str) -> str:
    """A Verilog identifier from a layer name: ``model.2.cv1.conv`` -> ``yoloq_pe_model_2_cv1_conv``."""
    return "yoloq_pe_" + re.sub(r"[^0-9A-Za-z_]", "_", layer)


def weight_words(layout: StreamLayout) -> tuple[list[int], int]:
    """Packed weight beats of every output channel (activation lanes left out), and their width."""
    bits = bit_matrix(*layout.weight_fields())
    return words_of(bits), bits.shape[1]


def storage_report(contract: LayerContract, cfg: PEConfig, qt_storage) -> dict:
    """Bits the layer needs in hardware, beside the quantizer's accounting of the same layer."""
    n = contract.codes.numel()
    code_bits = contract.fmt.weight_bits * n
    region_bits = n if contract.fmt.pwlq else 0
    param_bits = cfg.storage_bits()
    hw_total = code_bits + region_bits + param_bits + SHIFT_BITS
    padding = param_bits - contract.num_groups * cfg.group_word_layout.size  # lane mode: unused slots
    return {"code_bits": code_bits, "region_bits": region_bits, "param_memory_bits": param_bits,
            "shift_bits": SHIFT_BITS, "total_bits": hw_total, "padding_bits": padding,
            "quantizer_storage_bits": qt_storage.storage_bits,
            "agrees_with_quantizer": hw_total - padding == qt_storage.storage_bits}


def build_layer(contract: LayerContract, qt, lanes: int, out: Path) -> dict:
    """Write one layer's PE Verilog, memory files and manifest into ``out``; returns the manifest."""
    out = Path(out)
    layout = StreamLayout.build(contract, lanes)
    cfg = PEConfig.for_layer(layout)
    pe = ProcessingElement(cfg, cfg.param_init(layout))
    name = module_name(contract.name)
    source = verilog.convert(pe, name=name, emit_src=False)
    write_text(out / f"{name}.v", source)
    write_text(out / "params.hex", hex_lines(bit_matrix(*layout.param_fields(cfg.param_format))).decode())
    weight_bits = bit_matrix(*layout.weight_fields(cfg.stream))
    write_text(out / "weights.hex", hex_lines(weight_bits).decode())
    storage = storage_report(contract, cfg, quantized_storage(qt, contract.fmt.scale_bits))
    if not storage["agrees_with_quantizer"]:
        raise AssertionError(f"{contract.name}: hardware storage disagrees with the quantizer: {storage}")
    manifest = {
        "layer": contract.name, "module": name, "verilog": f"{name}.v", "contract": contract.summary(),
        "pe": {"lanes": cfg.lanes, "mode": cfg.mode, "latency_cycles": cfg.latency, "acc_bits": cfg.acc_bits,
               "beat_bits": cfg.beat_layout.size, "param_word_bits": cfg.word_layout.size,
               "param_words": cfg.param_words, "addr_bits": cfg.addr_bits,
               "beat_fields": [asdict(f) for f in cfg.stream.fields],
               "param_word_fields": {"groups_per_word": cfg.param_format.groups_per_word,
                                     "group_fields": [asdict(f) for f in cfg.param_format.group_fields]}},
        "stream": {"beats_per_dot_product": layout.beats, "lane_utilisation": round(layout.utilisation, 4),
                   "weights_hex": "weights.hex", "weight_beat_bits": weight_bits.shape[1], "params_hex": "params.hex"},
        "ports": verilog_ports(pe.signature), "storage": storage,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def _build_one(contract: LayerContract, qt, lanes: int, out: Path, lint_it: bool) -> dict:
    manifest = build_layer(contract, qt, lanes, out)
    if lint_it:
        from .lint import lint

        rc, messages = lint(Path(out) / manifest["verilog"])
        manifest["lint"] = {"exit_code": rc, "messages": messages}
    return manifest


def build_layers(layers: list[tuple[LayerContract, object, Path]], lanes: int, *, lint: bool = False,
                 jobs: int | None = None, progress: bool = True) -> list[dict]:
    """:func:`build_layer` for every (contract, record, folder), ``jobs`` processes at once (default: the CPUs);
    manifests in input order. With ``lint``, each manifest also holds Verilator's verdict on its Verilog.

    Elaborating a PE is pure Python (seconds per layer), so a model's layers are built in parallel, in
    spawned workers: forking after torch has started its thread pool can hang the child.
    """
    from tqdm import tqdm

    jobs = max(1, min(jobs or os.cpu_count() or 1, len(layers)))
    tasks = [(c, qt, lanes, Path(folder), lint) for c, qt, folder in layers]
    bar = tqdm(total=len(tasks), desc="verilog", unit="layer", disable=not progress, leave=False)
    try:
        if jobs == 1:
            return [_step(bar, _build_one(*t)) for t in tasks]
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_build_one, *t) for t in tasks]
            return [_step(bar, f.result()) for f in futures]
    finally:
        bar.close()


def _step(bar, manifest: dict) -> dict:
    bar.update()
    return manifest


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())
