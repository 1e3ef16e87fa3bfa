"""``yoloq hw cosim``: every weight of a model's layers through the RTL, compared bit for bit with ``sw``.

The layers' activations come from real COCO images run through the hardware-exact network; the processing
element is co-simulated with cocotb in Icarus or Verilator (see sim/README.md). With ``--unit layer`` the
layer unit (PE + integer epilogue) is co-simulated on whole feature maps of the integer-only network instead,
and its output codes are compared code for code.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..atomic import write_json
from ..intref.bounds import LANES_RANGE
from .common import (ACT_BITS, add_data_arg, add_quant_args, calib_dir, check_output_dir, check_output_file,
                     coco_root, int_in, spec_from_args)
from .hw_common import pe_layer_names, quantized_layers


def add_parser(hw_subparsers) -> None:
    from hw import EPILOGUE_FAULTS, PE_FAULTS
    from sim import DEFAULT_LANES, SIMULATORS

    p = hw_subparsers.add_parser(
        "cosim", help="co-simulate the PE on a model's layers (cocotb; Icarus or Verilator), bit-exact vs sw",
        description="Push every weight of the chosen layers through the generated processing element in RTL "
                    "simulation: the full dot product of every output channel at N output positions per layer, "
                    "with activations captured from real COCO images (hardware-exact network, activation "
                    "scales calibrated on coco128) and random idle cycles and back-pressure. Every accumulator is "
                    "compared with sw's integer reference. Without --quantized the weights are quantized first "
                    "(the flags of `yoloq quantize`). --unit layer co-simulates the layer unit (PE + integer "
                    "epilogue) on whole feature maps instead: every output position of each layer (--positions "
                    "all, its default there) on a real image through the integer-only network, each output code "
                    "(a Detect conv: t = acc + K_c) compared code for code. Exit status 1 if any result differs.")
    p.add_argument("--weights", help="checkpoint to quantize (official .pt or state_dict)")
    p.add_argument("--quantized", help="quantized artifact from `yoloq quantize` (then nothing is re-quantized)")
    p.add_argument("--layers", nargs="+", default=["all"], metavar="NAME",
                   help="`all` (default) or layer names, e.g. model.2.cv1.conv")
    p.add_argument("--unit", choices=("pe", "layer"), default="pe",
                   help="pe: the PE's accumulators (default); layer: the layer unit's output codes on feature maps "
                        "of the integer-only network (JSON: outputs_checked, mismatches, seconds)")
    p.add_argument("--positions", default=None, metavar="N|all",
                   help="output positions per layer, each with every output channel's full dot product "
                        "(default 1; with --unit layer: all, the whole feature map)")
    p.add_argument("--sim", choices=SIMULATORS, default="icarus", help="simulator (default icarus)")
    p.add_argument("--json", metavar="OUT", help="write macs, mismatches, seconds, macs_per_s and details")
    g = p.add_argument_group("testbench")
    g.add_argument("--lanes", type=int_in(*LANES_RANGE), default=DEFAULT_LANES,
                   help=f"dot-product elements per cycle L (default {DEFAULT_LANES})")
    g.add_argument("--exact", action="store_true",
                   help="one exact-width PE per layer (as `yoloq hw build` makes) instead of one superset PE per "
                        "layer kind; one simulator build per layer")
    g.add_argument("--images", type=int_in(1), default=1, help="COCO images the positions are spread over (default 1)")
    g.add_argument("--img", type=int_in(32, 8192), default=640, help="inference size, long side (default 640)")
    g.add_argument("--seed", type=int_in(0), default=1, help="seed of the positions and of the idle/stall generator")
    g.add_argument("--idle", type=int_in(0, 255), default=32, help="idle cycles on elements.valid, per 256 (default 32)")
    g.add_argument("--stall", type=int_in(0, 255), default=32, help="results.ready low, per 256 cycles (default 32)")
    g.add_argument("--fault", choices=PE_FAULTS + EPILOGUE_FAULTS,
                   help="build a deliberately wrong PE or (--unit layer) epilogue (mutation check): the run must "
                        "report mismatches")
    g.add_argument("--jobs", type=int_in(1), default=2, help="simulations run at once (default 2)")
    g.add_argument("--keep", metavar="DIR", help="keep the run folders (memories, results, logs) in DIR")
    g.add_argument("--waves", metavar="DIR", help="record a trace of each PE build's run into DIR (Icarus: "
                                                  "build<i>.fst, Verilator: build<i>.vcd), to look at a mismatch")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    h = p.add_argument_group("hardware format (integer contract)")
    h.add_argument("--act-bits", type=ACT_BITS, default=8, help="signed activation bits A, 2..16 (default 8)")
    h.add_argument("--calib", metavar="DIR", help="calibration images (default <data>/coco128/images/train2017)")
    h.add_argument("--calib-images", type=int_in(1), default=32,
                   help="calibration images used (default 32); the network runs only as far as the chosen layers")
    p.add_argument("--coco", metavar="DIR", help="COCO root with images/val2017/ (default: <data>/coco)")
    add_quant_args(p, calib=False)
    add_data_arg(p)
    p.set_defaults(run=run)


def _model(args):
    """(QuantizedModel, seconds spent quantizing)."""
    from ..checkpoint import load_model
    from ..quant.model import quantize_model

    if args.quantized:
        return quantized_layers(args.quantized), 0.0
    t0 = time.perf_counter()
    qm = quantize_model(load_model(args.weights).model, spec_from_args(args), progress=not args.quiet,
                        calib_dir=calib_dir(args))
    return qm, time.perf_counter() - t0


def run(args) -> int:
    from sim.capture import image_paths, network_cases
    from sim.cosim import CosimError, Options, cosimulate, summary
    from sw.intref.validate import HardwareFormat

    t0 = time.perf_counter()
    if not args.weights and not args.quantized:
        raise CosimError("give --weights (quantized first) or --quantized")
    positions = _positions(args.positions, args.unit)
    opts = Options(sim=args.sim, lanes=args.lanes, exact=args.exact, seed=args.seed, idle=args.idle,
                   stall=args.stall, fault=args.fault, jobs=args.jobs, work=Path(args.keep) if args.keep else None,
                   waves=Path(args.waves) if args.waves else None, progress=not args.quiet, unit=args.unit)
    opts.validate()  # a missing simulator fails here, before minutes of quantizing
    check_output_file(args.json, "--json")
    check_output_dir(args.keep, "--keep")
    check_output_dir(args.waves, "--waves")
    spec_from_args(args)  # and so do bad quantization flags
    qm, quantize_s = _model(args)
    names = pe_layer_names(qm, None if args.layers == ["all"] else args.layers, args.quantized or args.weights)
    calib = calib_dir(args)
    t1 = time.perf_counter()
    fmt = HardwareFormat(args.act_bits, qm.spec.scale_bits, args.calib_images)
    images = image_paths(coco_root(args), args.images)
    if args.unit == "layer":
        from sim.featuremap import feature_map_cases

        cases = feature_map_cases(qm, names, positions, images, calib, fmt, args.img, args.seed,
                                  progress=not args.quiet)
    else:
        cases = network_cases(qm, names, positions, images, calib, fmt, args.img, args.seed,
                              progress=not args.quiet)
    capture_s = time.perf_counter() - t1
    result = cosimulate(cases, opts)
    result.seconds = time.perf_counter() - t0  # the whole command: what "every weight through the RTL" costs
    result.timing = {"quantize": round(quantize_s, 3), "capture": round(capture_s, 3), **result.timing}
    print(summary(result, args.sim))
    if args.json:
        write_json(args.json, {**result.as_json(), "sim": args.sim, "lanes": args.lanes, "exact": args.exact,
                               "unit": args.unit, "positions": "all" if positions is None else positions,
                               "images": args.images, "layers_run": len(cases),
                               "weights": sum(c.contract.codes.numel() for c in cases),
                               "spec": qm.spec.as_dict(), "fault": args.fault})
    return 0 if result.ok else 1


def _positions(text: str | None, unit: str) -> int | None:
    """``--positions``: an int >= 1, or ``all`` (None: every output position; the layer unit's default)."""
    from sim.cosim import CosimError

    if text is None:
        return None if unit == "layer" else 1
    if text == "all":
        if unit != "layer":
            raise CosimError("--positions all needs --unit layer (the PE alone is checked at sampled positions)")
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CosimError(f"--positions must be 'all' or at least 1, got {text!r}")
    return value
