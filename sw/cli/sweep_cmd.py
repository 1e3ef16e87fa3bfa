"""``yoloq sweep``: reproduce the paper's Tables I and II and Fig. 4 (plus an equal-storage comparison) for a
checkpoint and a COCO root, resumably and in parallel."""

from __future__ import annotations

import argparse

from .common import add_data_arg, add_eval_args, check_output_dir, coco_root, eval_kwargs, float_in, int_in


def add_parser(sub) -> None:
    from ..sweep.plan import DEFAULT_BITS, EXECUTORS, PRESETS

    p = sub.add_parser(
        "sweep", help="the paper's study: Tables I and II, Fig. 4, equal-storage comparison (resumable, parallel)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Quantize and evaluate every configuration (method x granularity x bits) of a preset, plus\n"
                    "the unquantized baseline, and write under RESULTS:\n"
                    "  results.csv, results.json  one row per configuration (P, R, mAP@.5, mAP@.5:.95, loss, savings)\n"
                    "  report.md                  Tables I and II, Fig. 4, equal storage; the paper's YOLOv7 figures beside\n"
                    "  *.png                      fig4, equal_storage, pareto, layer_sqnr (per-layer SQNR heatmap)\n"
                    "  runs/<key>.json            each configuration's result, written atomically when it finishes\n\n"
                    "Presets (4 bits unless said; 'uniform' in the paper is affine):\n"
                    "  table1  affine and PWLQ at filter, F-shape, C-shape, channel; plus affine 8-bit filter\n"
                    "  table2  affine and PWLQ at mix3 and mix4\n"
                    "  fig4    PWLQ mix3 and affine mix3 at every k of --bits (gives the PWLQ k / affine k+1 pairs)\n"
                    "  beyond  beyond the paper: PWLQ and affine 4-bit mix3 with nearest or GPTQ rounding, with and\n"
                    "          without bias correction (same grid and storage; calibrated on coco128)\n"
                    "  all     table1, table2 and fig4, without duplicates\n\n"
                    "Rerunning the same command resumes: finished configurations are kept, failed ones retried.\n"
                    "A configuration that fails is recorded with its error and the sweep goes on (exit status 1\n"
                    "at the end). Ctrl-C or SIGTERM keeps every finished result (exit status 130).\n"
                    "Configurations run --workers at a time in local processes or as Ray tasks; the evaluation\n"
                    "uses a GPU when the worker has one. On the same hardware, results do not depend on the executor.")
    p.add_argument("--weights", required=True, help="checkpoint: official .pt or plain state_dict")
    p.add_argument("--cfg", help="architecture for a plain state_dict (built-in name); inferred when omitted")
    p.add_argument("--preset", required=True, choices=PRESETS, help="which part of the study to run")
    p.add_argument("--bits", default=DEFAULT_BITS, metavar="K",
                   help=f"fig4 only: bit widths k, a range '2-8', a list '4,6,8' or both '2-4,8' (default {DEFAULT_BITS})")
    p.add_argument("-o", "--output", required=True, metavar="RESULTS", help="results folder (created; reused to resume)")
    p.add_argument("--workers", type=int_in(1, 1024), metavar="N",
                   help="configurations evaluated at once (default: CPU count); 1 runs them in this process; "
                        "each gets max(1, CPUs // N) torch threads")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool on this machine (default); ray: Ray tasks (pip install 'yoloq[ray]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="ray: connect to this running cluster (its nodes need yoloq and the data at the same paths); "
                        "default: start a private local instance of --workers CPUs on 127.0.0.1")
    p.add_argument("--gpus-per-config", type=float_in(0.0, 64.0), metavar="G",
                   help="ray: GPUs each configuration asks for (default 1 if the cluster has GPUs, else 0). "
                        "Evaluation uses a GPU whenever the worker sees one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--previous", metavar="CSV",
                   help="an earlier results.csv (e.g. the checked-in one): report.md then lists per configuration "
                        "what changed against it (mAP@.5, saving, weight MSE)")
    add_eval_args(p)
    add_data_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..sweep.plan import plan
    from ..sweep.study import default_workers, run_study

    configs = plan(args.preset, args.bits)
    check_output_dir(args.output, "-o")
    workers = args.workers if args.workers is not None else default_workers()
    result = run_study(configs, args.weights, coco_root(args), args.output, eval_kwargs=eval_kwargs(args),
                       limit=args.limit, cfg=args.cfg, executor=args.executor, workers=workers,
                       ray_address=args.ray_address, gpus_per_config=args.gpus_per_config,
                       progress=not args.quiet, previous=args.previous)
    ok = len(result.rows) - len(result.failed)
    print(f"{len(result.rows)} configurations: {ok} ok, {len(result.failed)} failed "
          f"({result.computed} run now, {result.reused} reused); {result.wall_seconds:.0f} s")
    print(f"wrote {args.output}/report.md, results.csv, results.json"
          + "".join(f", {name}" for name in result.plots.values()))
    for r in result.failed:
        print(f"failed: {r['key']}: {r['error']}")
    return 1 if result.failed else 0
