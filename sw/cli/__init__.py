"""The ``yoloq`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``;
:mod:`.parser` puts them together without loading torch."""

from __future__ import annotations

import sys

from ..threads import apply_thread_policy

apply_thread_policy()  # before any command imports torch: see sw.threads

from ..errors import YoloqError  # noqa: E402
from .parser import COMMANDS, build_parser  # noqa: E402,F401 (build_parser: the parser, also for tests)


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
