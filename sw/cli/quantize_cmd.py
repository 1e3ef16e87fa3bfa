"""``yoloq quantize``: quantize a checkpoint's convs and write a quantized artifact and a report."""

from __future__ import annotations

import time

from .common import add_data_arg, add_quant_args, calib_dir, check_output_file, spec_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="quantize a model's conv weights (affine, symmetric, PWLQ)",
                       description="Quantize every conv of a YOLO checkpoint (deploy form: RepConv and IDetect "
                                   "fused) to integer codes and per-group parameters. OUT is a quantized artifact "
                                   "that `yoloq eval --weights OUT` evaluates like any checkpoint.")
    p.add_argument("--weights", required=True, help="checkpoint: official .pt or plain state_dict")
    p.add_argument("--cfg", help="architecture for a plain state_dict (built-in name); inferred when omitted")
    p.add_argument("-o", "--output", required=True, help="quantized artifact to write")
    p.add_argument("--json", metavar="REPORT", help="per-layer report (granularity, MSE, SQNR, bits) and totals")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_quant_args(p)
    add_data_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..atomic import write_json
    from ..checkpoint import load_model
    from ..checkpoint.artifact import save_quantized
    from ..quant.model import quantize_model
    from ..quant.report import summary_table

    spec = spec_from_args(args)
    check_output_file(args.output, "-o")
    check_output_file(args.json, "--json")
    loaded = load_model(args.weights, cfg=args.cfg)
    t0 = time.perf_counter()
    qm = quantize_model(loaded.model, spec, progress=not args.quiet, calib_dir=calib_dir(args))
    seconds = time.perf_counter() - t0
    save_quantized(qm, args.output, source=str(args.weights))
    report = qm.report()
    report["seconds"] = round(seconds, 3)
    print(summary_table(report), end="")
    print(f"wrote {args.output} ({seconds:.2f} s to quantize)")
    if args.json:
        write_json(args.json, report)
    return 0
