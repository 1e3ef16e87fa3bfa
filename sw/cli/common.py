"""Arguments shared by several subcommands, so they read the same everywhere."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..atomic import check_replaceable
from ..errors import YoloqError
from ..intref.bounds import ACT_BITS_RANGE, DEFAULT_SCALE_BITS, SCALE_BITS_RANGE
from ..paths import data_root


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer from ``lo`` to ``hi`` (no upper bound if None). Out of range is a usage
    error that names the flag, before any work starts."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {value}" if hi is not None
                                             else f"must be at least {lo}, got {value}")
        return value
    return parse


def float_in(lo: float, hi: float):
    """An argparse type: a number from ``lo`` to ``hi``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi}, got {text}")
        return value
    return parse


ACT_BITS = int_in(*ACT_BITS_RANGE)     # the integer contract's activation widths (sw.intref.contract)


def _writable_parent(path: Path, flag: str) -> None:
    parent = path.parent
    while not parent.exists():  # folders that do not exist yet are made; the first existing one must be writable
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise YoloqError(f"{flag} {path}: cannot write there ({parent} is not a writable folder)")


def check_output_file(path: str | None, flag: str) -> None:
    """Refuse an output file that cannot be written, before any work (so nothing is left half done).
    Only a regular file is ever replaced: a device node, FIFO or socket is refused (see :mod:`sw.atomic`)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise YoloqError(f"{flag} {path}: is a folder, expected a file name")
    try:
        check_replaceable(path)
    except YoloqError as e:
        raise YoloqError(f"{flag} {e}") from None
    _writable_parent(path, flag)


def check_output_dir(path: str | None, flag: str) -> None:
    """Refuse an output folder that is a file or cannot be made, before any work."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise YoloqError(f"{flag} {path}: is a file, expected a folder")
    if not path.exists():
        _writable_parent(path, flag)


def add_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="DIR", help="data root (default: $YOLOQ_DATA, then ../shared/data)")


def add_eval_args(p: argparse.ArgumentParser, coco_required: bool = False) -> None:
    g = p.add_argument_group("evaluation (YOLOv7 test.py conventions)")
    g.add_argument("--coco", metavar="DIR", required=coco_required,
                   help="COCO root with annotations/instances_val2017.json and images/val2017/"
                        + ("" if coco_required else " (default: <data>/coco)"))
    g.add_argument("--img", type=int_in(32, 8192), default=640, help="inference size, long side in pixels (default 640)")
    g.add_argument("--conf", type=float_in(0.0, 1.0), default=0.001, help="score threshold (default 0.001)")
    g.add_argument("--iou", type=float_in(0.0, 1.0), default=0.65, help="NMS IoU threshold (default 0.65)")
    g.add_argument("--max-det", type=int_in(1), default=300, help="detections kept per image (default 300)")
    g.add_argument("--limit", type=int_in(1), metavar="N", help="evaluate only the first N images")
    g.add_argument("--batch", type=int_in(1), default=8, help="images per forward pass (default 8)")


def coco_root(args) -> Path:
    return Path(args.coco) if args.coco else data_root(getattr(args, "data", None)) / "coco"


def calib_dir(args) -> Path:
    """Activation calibration images: ``--calib``, else coco128's train images in the data folder."""
    return Path(args.calib) if args.calib else data_root(getattr(args, "data", None)) / "coco128" / "images" / "train2017"


def eval_kwargs(args) -> dict:
    return dict(img_size=args.img, conf_thres=args.conf, iou_thres=args.iou, max_det=args.max_det,
                batch_size=args.batch)


def add_quant_args(p: argparse.ArgumentParser, defaults: bool = True, calib: bool = True) -> None:
    """The quantization flags of ``yoloq quantize`` (also taken by commands that quantize first). ``calib``:
    also add --calib and --calib-images (commands that already have them for activations pass False; the
    same images then serve both)."""
    from ..quant.names import CHANNEL_1X1, DEFAULT_CALIB_IMAGES, METHODS, MIXES, ROUNDINGS, SINGLE

    g = p.add_argument_group("quantization")
    g.add_argument("--method", choices=METHODS, default="pwlq", help="quantizer (default pwlq)")
    g.add_argument("--bits", type=int, default=4, help="weight code bits k, 2..8 (default 4)")
    g.add_argument("--granularity", choices=SINGLE + tuple(MIXES), default="mix3",
                   help="parameter sharing; mix3/mix4 pick per layer the least-MSE option (default mix3)")
    g.add_argument("--breakpoint", choices=("search", "approx"), default="search",
                   help="PWLQ breakpoint: the authors' coarse-to-fine least-error search to 0.001 m, or their "
                        "closed form p / sigma = ln(0.86143114 m / sigma + 0.607901097496529)")
    g.add_argument("--rate-lambda", type=float, default=0.0, metavar="L",
                   help="mixes only: minimise MSE/mean(w^2) + L * stored bits per weight (0 = plain MSE)")
    g.add_argument("--fold-bn", action="store_true", help="fold BN into convs before quantizing (deployment)")
    g.add_argument("--exclude-detect", action="store_true", help="leave the Detect convs in FP16")
    g.add_argument("--first-last-8bit", action="store_true", help="keep the first conv and the Detect convs at 8 bits")
    g.add_argument("--channel-1x1", choices=CHANNEL_1X1, default="fp16",
                   help="channel-wise on 1x1 convs: leave in FP16 as the paper (default) or quantize anyway")
    g.add_argument("--scale-bits", type=int_in(*SCALE_BITS_RANGE), default=DEFAULT_SCALE_BITS,
                   help=f"stored width of each group scale, F (default {DEFAULT_SCALE_BITS})")
    g.add_argument("--budget-bits", type=float_in(1.0, 32.0), metavar="B",
                   help="choose each layer's bits (2..8) and granularity (of --granularity's mix) to minimise the "
                        "summed layer-output noise-to-signal ratio on calibration data (nearest rounding) while "
                        "the average stored "
                        "bits per weight, region bits and parameters counted, stay <= B (exact knapsack); "
                        "--bits is then unused")
    b = p.add_argument_group("beyond the paper (same grid, same hardware; calibrated on images)")
    b.add_argument("--rounding", choices=ROUNDINGS, default="nearest",
                   help="nearest level (the paper, default) or gptq: column-by-column error feedback with each "
                        "conv's input second moment, each weight on its group's grid (lower layer-output error)")
    b.add_argument("--bias-correction", action="store_true",
                   help="fold each conv's expected output shift (W_hat - W) E[x] into its bias (or BN mean)")
    if calib:
        b.add_argument("--calib", metavar="DIR", help="calibration images (default <data>/coco128/images/train2017)")
        b.add_argument("--calib-images", type=int_in(1), default=DEFAULT_CALIB_IMAGES,
                       help=f"calibration images used (default {DEFAULT_CALIB_IMAGES})")
    b.add_argument("--calib-seed", type=int_in(0), default=0, help="seed of the sampled calibration positions")


def spec_from_args(args):
    from ..quant.model import QuantSpec

    spec = QuantSpec(method=args.method, bits=args.bits, granularity=args.granularity, breakpoint=args.breakpoint,
                     rate_lambda=args.rate_lambda, fold_bn=args.fold_bn, include_detect=not args.exclude_detect,
                     first_last_8bit=args.first_last_8bit, channel_1x1=args.channel_1x1, scale_bits=args.scale_bits,
                     rounding=args.rounding, bias_correction=args.bias_correction, calib_images=args.calib_images,
                     seed=args.calib_seed, budget_bits=args.budget_bits)
    spec.validate()
    return spec
