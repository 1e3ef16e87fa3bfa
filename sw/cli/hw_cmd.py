"""``yoloq hw``: the hardware side. ``validate`` compares hardware-exact mAP with software mAP."""

from __future__ import annotations

import math
from pathlib import Path

from ..atomic import write_json, write_text
from ..errors import QuantizationError
from ..intref.bounds import ACT_BITS_RANGE, LANES_RANGE, SCALE_BITS_RANGE
from . import hw_synth_cmd
from . import hw_cosim_cmd
from .common import (ACT_BITS, add_data_arg, add_eval_args, add_quant_args, check_output_dir, check_output_file,
                     calib_dir, coco_root, eval_kwargs, int_in, spec_from_args)
from .hw_common import pe_layer_names, quantized_layers


# Modules adding ``yoloq hw`` subcommands of their own (``add_parser(hw_subparsers)``), one per line.
HW_SUBCOMMANDS = [
    hw_synth_cmd,
    hw_cosim_cmd,
]


def _add_hw_format_args(p) -> None:
    g = p.add_argument_group("hardware format (integer contract)")
    g.add_argument("--act-bits", type=ACT_BITS, default=8, help="signed activation bits A, 2..16 (default 8)")
    g.add_argument("--calib", metavar="DIR", help="calibration images (default <data>/coco128/images/train2017)")
    g.add_argument("--calib-images", type=int_in(1), default=32, help="calibration images used (default 32)")


def add_parser(sub) -> None:
    p = sub.add_parser("hw", help="hardware: validate the integer contract's mAP, build and check the PE",
                       description="Hardware-side commands.")
    hw = p.add_subparsers(dest="hw_command", required=True, metavar="HW_COMMAND")
    v = hw.add_parser("validate", help="mAP of hardware-exact and integer-only inference against fake-quant",
                      description="Quantize, calibrate one activation quantizer per tensor, and evaluate the FP "
                                  "model, the fake-quantized model (SW), the MAC-exact model (HW: every "
                                  "quantized conv's accumulators per the integer contract, the epilogue in "
                                  "float) and the integer-only network (INT: integer codes between all layers, "
                                  "integer epilogues, only the Detect convs dequantized) on the same images, in "
                                  "one pass. --scale-bits sets the contract's scale mantissa width F.")
    v.add_argument("--weights", required=True, help="checkpoint to quantize (official .pt or state_dict)")
    v.add_argument("--json", metavar="OUT", help="write map50_sw, map50_hw, map50_int, map50_95_int, delta_map50, "
                                                 "delta_map50_int (INT - SW), per-layer SQNR and the FP "
                                                 "baseline as JSON")
    v.add_argument("--report", metavar="DIR", help="write DIR/validate.json and DIR/layers.md (the per-layer "
                                                   "SQNR table of the HW and INT models)")
    v.add_argument("--quiet", action="store_true")
    add_quant_args(v, calib=False)
    _add_hw_format_args(v)
    add_eval_args(v)
    add_data_arg(v)
    v.set_defaults(run=run_validate)

    b = hw.add_parser("build", help="Verilog, $readmemh files and manifest of the PEs for quantized layers",
                      description="Generate the processing elements that run layers of a quantized artifact: "
                                  "one PE module per kind of layer (addressing mode, code bits, PWLQ or not), "
                                  "sized for all its layers, as DIR/<module>.v with an empty parameter memory; "
                                  "per layer DIR/<layer>/params.hex (parameter words, written through the PE's "
                                  "params port from address 0) and DIR/<layer>/weights.hex (weight beats); "
                                  "DIR/manifest.json says which module and files each layer uses. --unit layer: "
                                  "a layer unit (PE + integer epilogue) per layer instead, each in its own folder "
                                  "(DIR/<layer>/ with --all-layers) with its memories initialised, epilogue.hex, "
                                  "table.hex and manifest.json.")
    b.add_argument("--quantized", required=True, help="quantized artifact from `yoloq quantize`")
    which = b.add_mutually_exclusive_group(required=True)
    which.add_argument("--layer", help="layer name, e.g. model.2.cv1.conv")
    which.add_argument("--all-layers", action="store_true", help="every quantized layer of the model")
    b.add_argument("--lanes", type=int_in(*LANES_RANGE), default=16, help="dot-product elements per cycle L (default 16)")
    b.add_argument("--act-bits", type=ACT_BITS, default=8, help="signed activation bits A, 2..16 (default 8)")
    b.add_argument("--unit", choices=("pe", "layer"), default="pe",
                   help="pe: the processing element alone (default); layer: the layer unit, PE + integer epilogue "
                        "(also epilogue.hex and table.hex; activation scales are calibrated on coco128 first)")
    b.add_argument("--calib", metavar="DIR", help="--unit layer: calibration images "
                                                  "(default <data>/coco128/images/train2017)")
    b.add_argument("--calib-images", type=int_in(1), default=32, help="--unit layer: calibration images used "
                                                                     "(default 32)")
    b.add_argument("--img", type=int_in(32, 8192), default=640, help="--unit layer: calibration size (default 640)")
    b.add_argument("-o", "--output", required=True, help="output folder")
    add_data_arg(b)
    b.set_defaults(run=run_build)

    f = hw.add_parser("formats", help="hardware-exact mAP over activation bits x scale bits",
                      description="Evaluate the hardware-exact model at every (act bits, scale bits) pair to show "
                                  "where the hardware format starts to cost mAP. Writes OUT/formats.md, .json, .png; "
                                  "finished points are kept in OUT/points/ and skipped on a rerun.")
    f.add_argument("--weights", required=True, help="checkpoint to quantize")
    f.add_argument("--act-bits-list", default="6,8,10", help="comma-separated A values (default 6,8,10)")
    f.add_argument("--scale-bits-list", default="8,12,16", help="comma-separated F values (default 8,12,16)")
    f.add_argument("-o", "--output", required=True, help="output folder")
    f.add_argument("--calib", metavar="DIR", help="calibration images (default <data>/coco128/images/train2017)")
    f.add_argument("--calib-images", type=int_in(1), default=32)
    f.add_argument("--quiet", action="store_true")
    add_quant_args(f, calib=False)
    add_eval_args(f)
    add_data_arg(f)
    f.set_defaults(run=run_formats_cmd)

    for module in HW_SUBCOMMANDS:  # further ``yoloq hw`` subcommands, each with add_parser(hw_subparsers)
        module.add_parser(hw)


def run_build(args) -> int:
    from hw.build import build_model

    from ..intref.contract import LayerContract

    check_output_dir(args.output, "-o")
    qm = quantized_layers(args.quantized)
    names = pe_layer_names(qm, None if args.all_layers else [args.layer], args.quantized)
    layers = [(LayerContract.from_record(name, qm.layers[name].qt, args.act_bits, qm.spec.scale_bits),
               qm.layers[name].qt) for name in names]
    out = Path(args.output)
    if args.unit == "layer":
        return _build_units(args, qm, names, [(c, qt, out / c.name if args.all_layers else out) for c, qt in layers])
    manifest = build_model(layers, args.lanes, out, lint=False)
    for m in manifest["modules"]:
        print(f"{out / m['verilog']}: {m['pe']['mode']} mode, {m['pe']['lanes']} lanes, acc {m['pe']['acc_bits']} "
              f"bits, {m['pe']['param_words']} parameter words, latency {m['pe']['latency_cycles']}; "
              f"{len(m['layers'])} layer{'s' * (len(m['layers']) != 1)}")
    for entry in manifest["layers"]:
        print(f"{entry['layer']}: {entry['module']}, {out / entry['params_hex']}, {out / entry['weights_hex']} "
              f"(lane use {entry['stream']['lane_utilisation']:.0%}, {entry['storage']['total_bits']:,} storage bits)")
    print(f"{out / 'manifest.json'}: {len(manifest['modules'])} PE modules for {len(manifest['layers'])} layers")
    return 0


def _build_units(args, qm, names, layers) -> int:
    """``hw build --unit layer``: the integer network gives each layer's epilogue (calibrated as far as the
    last chosen layer), then a layer unit per layer."""
    from hw.layer_build import build_layer_units, network_epilogues

    from ..intref.intnet import integer_network

    net = integer_network(qm, calib_dir(args), args.act_bits, qm.spec.scale_bits, args.calib_images,
                          progress=True, upto=names, img_size=args.img)
    epilogues = network_epilogues(net, names)
    units = [(c, qt, epilogues[c.name], folder) for c, qt, folder in layers]
    for (_, _, _, folder), name, m in zip(units, names, build_layer_units(units, args.lanes)):
        e = m["epilogue"]
        print(f"{name}: {folder / m['verilog']} (layer unit, {m['pe']['lanes']} lanes, acc {m['pe']['acc_bits']} "
              f"bits, epilogue {e['format']['offset_bits']}-bit K, {e['format']['pre_bits']}-bit pre-activation, "
              f"{e['activation']}; latency {m['latency_cycles']})")
    return 0


def _int_list(text: str, flag: str, bounds: tuple[int, int]) -> list[int]:
    lo, hi = bounds
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(lo <= v <= hi for v in values):
        raise QuantizationError(f"{flag}: expected comma-separated integers from {lo} to {hi}, got {text!r}")
    return values


def run_formats_cmd(args) -> int:
    from ..checkpoint import load_model
    from ..eval.coco import load_coco
    from ..intref.formats import formats_table, run_formats, write_report
    from ..quant.model import quantize_model

    acts = _int_list(args.act_bits_list, "--act-bits-list", ACT_BITS_RANGE)
    scales = _int_list(args.scale_bits_list, "--scale-bits-list", SCALE_BITS_RANGE)
    check_output_dir(args.output, "-o")
    spec = spec_from_args(args)
    qm = quantize_model(load_model(args.weights).model, spec, progress=not args.quiet,
                        calib_dir=calib_dir(args))
    coco = load_coco(coco_root(args), limit=args.limit)
    result = run_formats(qm, coco, acts, scales, calib_dir(args), args.calib_images, Path(args.output),
                         eval_kwargs(args), progress=not args.quiet)
    write_report(result, Path(args.output))
    print(formats_table(result), end="")
    return 0


def _format_row(label: str, r: dict) -> str:
    return f"| {label} | {r['precision']:.3f} | {r['recall']:.3f} | {r['map50']:.4f} | {r['map50_95']:.4f} |"


def _db(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def layers_table(result: dict) -> str:
    """The per-layer SQNR table (Markdown) of a :func:`~sw.intref.validate.validate` result."""
    head = ("| layer | shape | granularity | HW layer | INT layer | HW act layer | epilogue cost | HW network | "
            "INT network |\n|---|---|---|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['granularity']} | {_db(r['layer_sqnr_db'])} | "
        f"{_db(r['int_layer_sqnr_db'])} | {_db(r['hw_act_layer_sqnr_db'])} | {_db(r['epilogue_cost_db'])} | "
        f"{_db(r['network_sqnr_db'])} | {_db(r['int_network_sqnr_db'])} |\n" for r in result["layers"])


LAYERS_LEGEND = """SQNR in dB against the fake-quantized (SW) network, on the first evaluation image. "layer": the layer
alone, fed the SW network's own input; "network": both networks end to end. HW layer / network: the MAC-exact
conv's output before BatchNorm and activation (today's model); INT: the integer network's output tensor
(dequantized codes after the integer epilogue; Detect convs: dequantized accumulators); HW act layer: the
MAC-exact conv with the float epilogue, after BatchNorm and activation, the same point as INT layer; epilogue
cost = HW act layer - INT layer: what the integer epilogue and the A-bit output codes cost this layer.
"""


def run_validate(args) -> int:
    from ..checkpoint import load_model
    from ..eval.coco import load_coco
    from ..intref.validate import HardwareFormat, validate
    from ..quant.model import quantize_model

    spec = spec_from_args(args)
    check_output_file(args.json, "--json")
    if args.report:
        check_output_dir(args.report, "--report")
    loaded = load_model(args.weights)
    coco = load_coco(coco_root(args), limit=args.limit)
    qm = quantize_model(loaded.model, spec, progress=not args.quiet, calib_dir=calib_dir(args))
    fmt = HardwareFormat(args.act_bits, args.scale_bits, args.calib_images)
    result = validate(loaded.model, qm, coco, fmt, calib_dir(args), eval_kwargs(args), progress=not args.quiet)
    ev = result["evaluations"]
    title = (f"{spec.method} {spec.bits}-bit {spec.granularity}; A={fmt.act_bits}, F={fmt.scale_bits}; "
             f"{result['images']} images")
    summary = (f"| model | P | R | mAP@.5 | mAP@.5:.95 |\n|---|---:|---:|---:|---:|\n{_format_row('FP', ev['fp'])}\n"
               f"{_format_row('SW (fake-quant)', ev['sw'])}\n{_format_row('HW (MAC-exact, float epilogue)', ev['hw'])}\n"
               f"{_format_row('INT (integer-only)', ev['int'])}\n")
    print(f"{title}\n\n{summary}")
    print(f"delta mAP@.5 (HW - SW) = {result['delta_map50']:+.4f}; delta mAP@.5:.95 = {result['delta_map50_95']:+.4f}")
    print(f"delta mAP@.5 (INT - SW) = {result['delta_map50_int']:+.4f}; "
          f"delta mAP@.5:.95 = {result['delta_map50_95_int']:+.4f}; {result['seconds']} s")
    worst = sorted(result["layers"], key=lambda r: r["int_layer_sqnr_db"])[:5]
    print("\nlowest per-layer SQNR of the integer network (this layer alone, dB; whole network, dB; epilogue cost, dB):")
    for r in worst:
        print(f"  {r['name']:<24} {_db(r['int_layer_sqnr_db']):>6}  {_db(r['int_network_sqnr_db']):>6}  "
              f"{_db(r['epilogue_cost_db']):>5}")
    if args.json:
        write_json(args.json, result)
    if args.report:
        out = Path(args.report)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "validate.json", result)
        write_text(out / "layers.md", f"# Per-layer SQNR: {title}\n\n{summary}\n{LAYERS_LEGEND}\n"
                                      f"{layers_table(result)}")
    return 0
