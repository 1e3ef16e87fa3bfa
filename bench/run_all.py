"""Run every benchmark in this folder in turn (``make bench``)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402,F401 (the thread policy, before any benchmark loads torch)

if __name__ == "__main__":
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"\n## {script.stem}\n", flush=True)
        runpy.run_path(str(script), run_name="__main__")
