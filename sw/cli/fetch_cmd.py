"""``yoloq fetch``: download the official YOLOv7 checkpoint and COCO val2017 into a data folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..fetch import GROUPS, fetch, parse_what


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fetch", help="download yolov7.pt and COCO val2017 (needs internet), verified by sha256",
        description="Download the official YOLOv7 checkpoint (v0.1 release) and COCO val2017 (images and "
                    "instance annotations), check each file's sha256 against the published value, and lay "
                    "them out as DEST/yolov7/yolov7.pt, DEST/coco/images/val2017/ and "
                    "DEST/coco/annotations/instances_val2017.json. Interrupted downloads resume on the next "
                    "run; files already present and verified are skipped.",
        epilog="Afterwards use --data DEST (or export YOLOQ_DATA=DEST). The zips stay in DEST/downloads/ so "
               "reruns can verify them; delete them to free about 1 GB. Without internet, put the files "
               "there by hand (the error message says where) or point --data at an existing data folder.")
    p.add_argument("--dest", default="data", metavar="DIR", help="folder to fill (default: ./data)")
    p.add_argument("--what", default=",".join(GROUPS), metavar="LIST",
                   help=f"comma-separated subset of: {', '.join(GROUPS)} (default: all)")
    p.add_argument("--base-url", metavar="URL",
                   help="fetch every file as URL/<file name> instead, for a mirror or a local test server")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    fetch(args.dest, parse_what(args.what), base_url=args.base_url, progress=not args.quiet)
    root = Path(args.dest).resolve()  # absolute, so the hint works from any directory
    print(f"done: use --data {root} (or export YOLOQ_DATA={root})")
    return 0
