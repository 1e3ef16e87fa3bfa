"""``yoloq eval``: COCO P, R, mAP@.5 and mAP@.5:.95 of a checkpoint or quantized artifact."""

from __future__ import annotations

from .common import add_data_arg, add_eval_args, check_output_file, coco_root, eval_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on COCO (P, R, mAP@.5, mAP@.5:.95)",
                       description="Evaluate a YOLO checkpoint (official .pt, state_dict or yoloq quantized "
                                   "artifact) on a COCO root with YOLOv7 test.py conventions; mAP by pycocotools.")
    p.add_argument("--weights", required=True, help="checkpoint: official .pt, plain state_dict, or quantized artifact")
    p.add_argument("--cfg", help="architecture for a plain state_dict (built-in name); inferred when omitted")
    p.add_argument("--json", metavar="OUT",
                   help="write the result as JSON (precision, recall, map50, map50_95, images, skipped, seconds); "
                        "unreadable or mis-sized images are skipped with a warning, more than 5%% fails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_eval_args(p)
    add_data_arg(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..atomic import write_json
    from ..checkpoint import load_model
    from ..eval.coco import evaluate, format_table, load_coco

    check_output_file(args.json, "--json")
    loaded = load_model(args.weights, cfg=args.cfg)
    coco = load_coco(coco_root(args), limit=args.limit)
    result = evaluate(loaded.model, coco, stride=int(loaded.model.stride.max()), progress=not args.quiet,
                      **eval_kwargs(args))
    result = {"weights": str(args.weights), **result}
    print(format_table([(str(args.weights), result)]), end="")
    if args.json:
        write_json(args.json, result)
    return 0
