"""The ``yoloq`` argument parser. Building it loads no torch, amaranth or matplotlib (each command imports what
it needs when it runs), so ``yoloq --help`` and every ``yoloq COMMAND --help`` answer at once."""

from __future__ import annotations

import argparse

from .. import __version__, limits
from . import demo_cmd, eval_cmd, fetch_cmd, generate_cmd, hw_cmd, quantize_cmd, sweep_cmd

COMMANDS = [eval_cmd, quantize_cmd, sweep_cmd, hw_cmd, generate_cmd, fetch_cmd, demo_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yoloq",
        description="Quantize YOLO detectors and generate bit-exact FPGA processing elements.",
        epilog="Data is found via --data, then $YOLOQ_DATA, then ../shared/data beside the checkout. "
               + limits.describe() + " Exit status 2: bad input; 3: internal error (use --debug).")
    parser.add_argument("--version", action="version", version=f"yoloq {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser
