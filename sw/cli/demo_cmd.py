"""``yoloq demo``: the main job on the shared data, end to end, with one summary at the end."""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_model
from ..eval.coco import evaluate, format_table, load_coco
from ..paths import data_file


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the shared data and print one summary",
                       description="Evaluate the real YOLOv5n checkpoint on the COCO subset of the data folder.")
    p.add_argument("--data", metavar="DIR", help="data root (default: $YOLOQ_DATA, then ../shared/data)")
    p.add_argument("--out", default="out/demo", help="folder for the demo's result files (default out/demo)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N images")
    p.set_defaults(run=run)


def run(args) -> int:
    weights = data_file("yolov5n/yolov5n.pt", args.data)
    coco = load_coco(data_file("coco", args.data), limit=args.limit)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model = load_model(weights).model
    fp = evaluate(model, coco, stride=int(model.stride.max()))
    print("\n== yoloq demo summary ==")
    print(format_table([("yolov5n FP32", fp)]), end="")
    return 0
