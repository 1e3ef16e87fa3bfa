"""Generate the Verilog of the processing elements that run a quantized model's layers, and each layer's
memory files.

A PE's datapath depends on the layer only through its *kind* (:func:`pe_kind`: addressing mode,
lanes, code bits k, PWLQ or not, activation and scale bits); the other widths (zero-point, breakpoint,
accumulator, parameter depth) are upper bounds, so one PE elaborated for the superset of a kind's layers
(:meth:`hw.config.PEConfig.superset`) computes every one of their accumulators exactly. So
:func:`build_model` elaborates (and lints) one module per kind, not one per layer, and writes into a folder:

- ``<module>.v``: the PE (Amaranth -> Verilog) with an empty parameter memory;
- ``<layer>/params.hex``: the layer's parameter words in its module's word layout (one word per line, LSB-first
  packing of :attr:`hw.config.PEConfig.word_layout`), written through the PE's ``params`` port at addresses
  0, 1, ... before the layer's beats;
- ``<layer>/weights.hex``: the layer's packed weight codes in stream order, one beat per line: for each output
  channel, its beats' code, tail-bit, address and last fields in the module's beat layout (the activations
  left out);
- ``manifest.json``: per module its Verilog file, configuration, ports, latency and lint verdict; per layer
  the module it runs on, its two hex files, its contract, stream and storage bits (the layer's own needs,
  checked against the quantizer's memory accounting).

Each step is a function of its own (:func:`pe_verilog`, :func:`write_module`, :func:`write_layer_memories`,
:func:`write_manifest`), so that a further kind of module can slot in beside the PE.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from sw.atomic import write_json, write_text
from sw.intref.contract import LayerContract
from sw.intref.packing import bit_matrix, hex_lines, words_of
from sw.intref.stream import StreamLayout
from sw.quant.accounting import SHIFT_BITS, quantized_storage

from .config import PEConfig
from .layer_unit import LayerUnit, LayerUnitConfig
from .pe import ProcessingElement, pe_signature, verilog_ports

MANIFEST = "manifest.json"


def pe_kind(layout: StreamLayout) -> tuple:
    """What a layer's PE datapath depends on: addressing mode, lanes, code bits k, PWLQ or not, activation and
    scale bits. The other widths are upper bounds, so one :meth:`PEConfig.superset` PE per kind runs every
    layer of that kind exactly. (Here, not in :mod:`hw.config`: grouping decides which modules a build writes,
    not any module's Verilog, so it stays out of :func:`generator_digest`.)"""
    f = layout.contract.fmt
    return (layout.mode, layout.lanes, f.weight_bits, f.pwlq, f.act_bits, f.scale_bits)


def group_by_kind(layouts: list[StreamLayout], epilogues: list | None = None) -> dict[tuple, list[int]]:
    """Indices of ``layouts`` per :func:`pe_kind`, kinds in first-seen order. With ``epilogues`` (layer units:
    one :class:`~sw.intref.epilogue.LayerEpilogue` per layout), also per the epilogue's code widths (output and
    pre-activation bits); its other widths are upper bounds
    (:func:`~sw.intref.epilogue.superset_epilogue_format`)."""
    groups: dict[tuple, list[int]] = {}
    for i, layout in enumerate(layouts):
        key = pe_kind(layout)
        if epilogues is not None:
            key += (epilogues[i].fmt.out_bits, epilogues[i].fmt.pre_bits)
        groups.setdefault(key, []).append(i)
    return groups


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


# The modules that, beside the PE's, decide a layer unit's (PE + epilogue) Verilog.
UNIT_GENERATOR_MODULES = ("hw.epilogue", "hw.layer_unit", "sw.intref.epilogue")


def unit_generator_digest() -> str:
    """:func:`generator_digest` extended by the epilogue's and layer unit's sources: what caches of generated
    or synthesised layer units key on."""
    h = hashlib.sha256(generator_digest().encode())
    for name in UNIT_GENERATOR_MODULES:
        h.update(name.encode() + Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def module_name(layer: str) -> str:
    """A Verilog identifier from a layer name: ``model.2.cv1.conv`` -> ``yoloq_pe_model_2_cv1_conv``."""
    return "yoloq_pe_" + re.sub(r"[^0-9A-Za-z_]", "_", layer)


def pe_module_name(cfg: PEConfig | LayerUnitConfig, variant: str = "") -> str:
    """A name for a PE (or layer unit) module that says what it is (the Verilator waivers match ``*yoloq_pe_*``
    and ``*yoloq_unit_*``); ``variant`` marks a module that is not the plain one (a deliberate fault, another
    parameter memory)."""
    pe = cfg.pe if isinstance(cfg, LayerUnitConfig) else cfg
    f = pe.fmt
    name = (f"{pe.mode}_l{pe.lanes}_k{f.weight_bits}{'p' if f.pwlq else 'u'}_a{f.act_bits}"
            f"_f{f.scale_bits}_z{f.zero_point_bits}_b{f.breakpoint_bits}_acc{f.acc_bits}_w{pe.param_words}")
    if isinstance(cfg, LayerUnitConfig):
        e = cfg.epilogue.fmt
        name = (f"yoloq_unit_{name}_e{e.acc_bits}_{e.offset_bits}_{e.out_bits}_{e.pre_bits}_{e.multiplier_bits}"
                f"_{e.max_shift}_c{cfg.epilogue.channels}")
    else:
        name = f"yoloq_pe_{name}"
    return name + (f"_{variant}" if variant else "")


def pe_verilog(cfg: PEConfig | LayerUnitConfig, variant: str = "", make: Callable | None = None,
               cache: Path | None = None) -> tuple[str, str]:
    """(module name, Verilog) of the PE of ``cfg`` with an empty parameter memory (loaded through ``params``),
    or of the layer unit (PE + epilogue, :mod:`hw.layer_unit`) of a :class:`LayerUnitConfig`, its memories
    empty too.

    ``make``: builds the component instead of the plain one (with a ``variant`` that names the difference).
    With ``cache`` the Verilog is kept there, keyed by the config, the variant and :func:`generator_digest`
    (layer units: :func:`unit_generator_digest`; any change to the generator makes a new entry):
    elaborating a wide PE takes Amaranth seconds to a minute, and co-simulation and ``hw build`` of the same
    model need the same PEs.
    """
    from amaranth.back import verilog

    unit = isinstance(cfg, LayerUnitConfig)
    name = pe_module_name(cfg, variant)
    path = None
    if cache is not None:
        digest = unit_generator_digest() if unit else generator_digest()
        key = hashlib.sha256(repr((cfg, variant, digest)).encode()).hexdigest()[:20]
        path = Path(cache) / "pe-verilog" / f"{name}-{key}.v"
        if path.exists():
            return name, path.read_text()
    if make is not None:
        component = make()
    else:
        component = LayerUnit(cfg) if unit else ProcessingElement(cfg, None)
    source = verilog.convert(component, name=name, emit_src=False)
    if path is not None:
        write_text(path, source)
    return name, source


def weight_words(layout: StreamLayout) -> tuple[list[int], int]:
    """Packed weight beats of every output channel (activation lanes left out), and their width."""
    bits = bit_matrix(*layout.weight_fields())
    return words_of(bits), bits.shape[1]


def storage_report(contract: LayerContract, cfg: PEConfig, qt_storage) -> dict:
    """Bits the layer needs in hardware (``cfg``: its own exact PE), beside the quantizer's accounting."""
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


def pe_summary(cfg: PEConfig) -> dict:
    """The manifest's description of a PE module: sizes, latency and the field layouts of a beat and a
    parameter word."""
    return {"lanes": cfg.lanes, "mode": cfg.mode, "latency_cycles": cfg.latency, "acc_bits": cfg.acc_bits,
            "beat_bits": cfg.beat_layout.size, "param_word_bits": cfg.word_layout.size,
            "param_words": cfg.param_words, "addr_bits": cfg.addr_bits,
            "beat_fields": [asdict(f) for f in cfg.stream.fields],
            "param_word_fields": {"groups_per_word": cfg.param_format.groups_per_word,
                                  "group_fields": [asdict(f) for f in cfg.param_format.group_fields]}}


def write_module(cfg: PEConfig, out: Path, cache: Path | None = None) -> dict:
    """Write the PE module of ``cfg`` into ``out``; its manifest entry (without the lint verdict)."""
    name, source = pe_verilog(cfg, cache=cache)
    write_text(Path(out) / f"{name}.v", source)
    return {"module": name, "verilog": f"{name}.v", "pe": pe_summary(cfg),
            "ports": verilog_ports(pe_signature(cfg))}


def lint_verdict(verilog: Path) -> dict:
    from .lint import lint

    rc, messages = lint(verilog)
    return {"exit_code": rc, "messages": messages}


def write_layer_memories(layout: StreamLayout, cfg: PEConfig, folder: Path) -> dict:
    """Write a layer's ``params.hex`` and ``weights.hex`` for the module of ``cfg`` into ``folder``; their
    paths relative to the build folder (``folder``'s parent) and their sizes, for the manifest."""
    folder = Path(folder)
    cfg.check_fits(layout)
    write_text(folder / "params.hex", hex_lines(bit_matrix(*layout.param_fields(cfg.param_format))).decode())
    weight_bits = bit_matrix(*layout.weight_fields(cfg.stream))
    write_text(folder / "weights.hex", hex_lines(weight_bits).decode())
    return {"params_hex": f"{folder.name}/params.hex", "param_words": layout.param_words,
            "weights_hex": f"{folder.name}/weights.hex", "weight_beat_bits": weight_bits.shape[1],
            "weight_words": weight_bits.shape[0]}


def layer_entry(layout: StreamLayout, qt, module: str, memories: dict) -> dict:
    """The manifest's entry of one layer: its module, memory files, contract, stream and storage."""
    contract = layout.contract
    storage = storage_report(contract, PEConfig.for_layer(layout), quantized_storage(qt, contract.fmt.scale_bits))
    if not storage["agrees_with_quantizer"]:
        raise AssertionError(f"{contract.name}: hardware storage disagrees with the quantizer: {storage}")
    return {"layer": contract.name, "module": module, **memories, "contract": contract.summary(),
            "stream": {"beats_per_dot_product": layout.beats, "lane_utilisation": round(layout.utilisation, 4)},
            "storage": storage}


def write_manifest(out: Path, lanes: int, modules: list[dict], layers: list[dict]) -> dict:
    manifest = {"lanes": lanes, "modules": modules, "layers": layers}
    write_json(Path(out) / MANIFEST, manifest)
    return manifest


def build_model(layers: list[tuple[LayerContract, object]], lanes: int, out: Path, *, lint: bool = True,
                cache: Path | None = None, progress: bool = True) -> dict:
    """One PE module per kind of layer among ``layers`` (contract, quantizer record), each layer's memory files,
    and the manifest, in ``out``; returns the manifest. With ``lint``, each module's entry holds Verilator's
    verdict on its Verilog (the lints run while the next module is elaborated). ``cache``: see
    :func:`pe_verilog`."""
    from tqdm import tqdm

    out = Path(out)
    layouts = [StreamLayout.build(contract, lanes) for contract, _ in layers]
    groups = group_by_kind(layouts)
    modules: list[dict] = []
    entries: list[dict | None] = [None] * len(layers)
    bar = tqdm(total=len(groups) + len(layers), desc="verilog", unit="file", disable=not progress, leave=False)
    with ThreadPoolExecutor(max_workers=max(1, min(len(groups), os.cpu_count() or 1))) as pool:
        lints = []
        for indices in groups.values():
            cfg = PEConfig.superset([layouts[i] for i in indices])
            module = write_module(cfg, out, cache)
            module["layers"] = [layers[i][0].name for i in indices]
            if lint:
                lints.append((module, pool.submit(lint_verdict, out / module["verilog"])))
            modules.append(module)
            bar.update()
            for i in indices:
                memories = write_layer_memories(layouts[i], cfg, out / layers[i][0].name)
                entries[i] = layer_entry(layouts[i], layers[i][1], module["module"], memories)
                bar.update()
        for module, verdict in lints:
            module["lint"] = verdict.result()
    bar.close()
    return write_manifest(out, lanes, modules, entries)


def load_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())
