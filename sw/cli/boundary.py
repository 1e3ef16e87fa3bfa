"""The one place where a command's exceptions become what the user sees.

- bad input (:class:`~sw.errors.YoloqError`, or an ``OSError`` naming a path): one line, exit status 2;
- out of memory or too deeply nested data that slipped past the input checks: one line, exit status 2;
- anything else is a bug in yoloq: one line that says so, with a hint to report it, exit status 3;
- Ctrl-C: exit status 130.

A traceback is printed only with ``yoloq --debug`` (or ``YOLOQ_DEBUG=1``).
"""

from __future__ import annotations

import os
import sys
import traceback

from ..errors import YoloqError

BAD_INPUT, INTERNAL, INTERRUPTED = 2, 3, 130
_MAX_MESSAGE = 400


def one_line(text) -> str:
    """``text`` on one line, cut to a readable length."""
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _classify(e: BaseException, prefix: str) -> tuple[int, str]:
    if isinstance(e, (YoloqError, OSError)):  # OSError: a disk filling up, a file vanishing mid-run; names the path
        return BAD_INPUT, f"{prefix}: error: {one_line(e)}"
    if isinstance(e, (MemoryError, RecursionError)):
        return BAD_INPUT, f"{prefix}: error: the input is too large or too deeply nested ({type(e).__name__})"
    return INTERNAL, (f"{prefix}: internal error: {type(e).__name__}: {one_line(e)} (this is a bug in yoloq; "
                      "please report it with the command line and the output of the same command with --debug)")


def run_command(args, command: str, debug: bool = False) -> int:
    """Run ``args.run(args)`` and map every exception to a one-line message and an exit status."""
    debug = debug or os.environ.get("YOLOQ_DEBUG", "") not in ("", "0")
    prefix = f"yoloq {command}"
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the boundary: a bug must not look like a crash
        status, message = _classify(e, prefix)
        if debug:
            traceback.print_exc()
        print(message, file=sys.stderr)
        return status
