"""The ``yoloq`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "hw_command", None))))
    from .boundary import run_command

    return run_command(args, command, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
