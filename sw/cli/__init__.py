"""The ``yoloq`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``;
:mod:`.parser` puts them together without loading torch."""

from __future__ import annotations

import sys

from ..heap import keep_freed_memory
from ..threads import apply_thread_policy

apply_thread_policy()  # before any command imports torch: see sw.threads
keep_freed_memory()  # large tensors reuse freed pages: see sw.heap

from .parser import COMMANDS, build_parser  # noqa: E402,F401 (build_parser: the parser, also for tests)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "hw_command", None))))
    from .boundary import run_command

    return run_command(args, command, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
