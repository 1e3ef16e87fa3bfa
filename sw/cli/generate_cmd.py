"""``yoloq generate``: write an official-format checkpoint of a built-in architecture with generated weights."""

from __future__ import annotations

from ..models.configs import BUILTIN


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="write an official-format checkpoint with generated weights",
                       description="Write a checkpoint in the official YOLOv5/YOLOv7 pickle format (model object, "
                                   "class names, embedded config) filled with seeded, trained-looking weights. "
                                   "Use it to exercise the pipeline on real YOLOv7 shapes.")
    p.add_argument("--model", default="yolov7-training", choices=sorted(BUILTIN),
                   help="architecture (default yolov7-training: IDetect and unfused RepConv, as the released yolov7.pt)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deploy", action="store_true", help="write the fused deploy form (RepConv and IDetect fused)")
    p.add_argument("-o", "--output", required=True, help="output .pt path")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoint.official import generate_weights, write_official_checkpoint
    from ..eval.coco_classes import NAMES
    from ..models import YoloModel, builtin_config, to_deploy

    model = generate_weights(YoloModel(builtin_config(args.model), names=NAMES), seed=args.seed)
    if args.deploy:
        to_deploy(model)
    write_official_checkpoint(model, args.output, yaml_file=f"{args.model}.yaml")
    print(f"wrote {args.output}: {args.model}{' (deploy)' if args.deploy else ''}, seed {args.seed}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    return 0
