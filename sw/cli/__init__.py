"""The ``yoloq`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import YoloqError
from . import demo_cmd, eval_cmd, fetch_cmd, generate_cmd, hw_cmd, quantize_cmd, sweep_cmd

COMMANDS = [eval_cmd, quantize_cmd, sweep_cmd, hw_cmd, generate_cmd, fetch_cmd, demo_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yoloq",
        description="Quantize YOLO detectors and generate bit-exact FPGA processing elements.",
        epilog="Data is found via --data, then $YOLOQ_DATA, then ../shared/data beside the checkout.")
    parser.add_argument("--version", action="version", version=f"yoloq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "hw_command", None))))
    try:
        return args.run(args) or 0
    except YoloqError as e:
        print(f"yoloq {command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a disk filling up or a file vanishing mid-run: the message names the path
        print(f"yoloq {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"yoloq {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
