"""yoloq's compiled C kernels: how each is built, loaded, switched off and run on several threads.

Four modules carry a small C library for their hot loops: :mod:`sw.quant.pwlq_kernel` (the PWLQ search),
:mod:`sw.intref.fused` (the work around the exact convs), :mod:`sw.eval.coco_match` (COCO's per-image
matching) and :mod:`sw.eval.nms` (the evaluation's NMS). Each declares one :class:`CompiledKernel`; this module is what they share:

- the build: the system C compiler (``$CC``, else ``cc``) with :data:`FLAGS`, into the user's cache
  (``$XDG_CACHE_HOME/yoloq``, else ``~/.cache/yoloq``), keyed by the source, compiler, flags and CPU, loaded
  with ctypes on first use. Where no compiler works the kernel is None and its caller takes its slower path;
- :meth:`CompiledKernel.disabled`: that slower path on purpose (benchmarks' baselines, tests);
- :func:`run_split`: one call cut into pieces that the torch thread count's workers take in turn, so a thread
  slowed by another process on its core does not hold the others up.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# no fused multiply-add (-ffp-contract=off): every kernel's products and sums are IEEE's, as torch's are
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
         "-shared", "-fPIC"]

# Parallel work is cut into pieces of at least PIECE_WORK element visits, up to PIECES_PER_THREAD per thread.
PIECE_WORK = 1 << 16
PIECES_PER_THREAD = 8


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("model name", "flags"))), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloq"


def compiler() -> str | None:
    """The C compiler the kernels are built with (``$CC``, else ``cc``), or None where there is none."""
    return shutil.which(os.environ.get("CC", "cc"))


def build_library(stem: str, source: str, what: str, fallback: str) -> ctypes.CDLL | None:
    """C ``source`` built with :data:`FLAGS` into the user's cache as ``stem-<key>.so`` (keyed by the source,
    compiler, flags and CPU) and loaded; None (and a line on stderr naming ``what`` and the ``fallback``) where
    no compiler works."""
    compiler_path = compiler()
    if compiler_path is None:
        return None
    key = hashlib.sha256("\0".join([source, compiler_path, *FLAGS, platform.machine(), _cpu_id()]).encode()).hexdigest()
    target = _cache_dir() / f"{stem}-{key[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / f"{stem}.c", Path(tmp) / f"{stem}.so"
            src.write_text(source)
            done = subprocess.run([compiler_path, *FLAGS, str(src), "-o", str(lib), "-lm"], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"yoloq: building {what} failed ({compiler_path}); using {fallback}\n"
                      f"{done.stderr.strip()}", file=sys.stderr)
                return None
            os.replace(lib, target)  # atomic: a concurrent build writes the same bytes
    return ctypes.CDLL(str(target))


class CompiledKernel:
    """One C library, built and loaded on first use; ``declare`` gives its functions their ctypes signatures.
    ``what`` names it and ``fallback`` the path its callers take without it, in the messages."""

    def __init__(self, stem: str, source: str, what: str, fallback: str,
                 declare: Callable[[ctypes.CDLL], None]):
        self.stem, self.source, self.what, self.fallback, self.declare = stem, source, what, fallback, declare
        self._library: ctypes.CDLL | bool | None = None  # None: not tried yet; False: failed, or disabled

    def library(self) -> ctypes.CDLL | None:
        """The loaded library, or None where it cannot be built (or inside :meth:`disabled`)."""
        if self._library is None:
            try:
                library = build_library(self.stem, self.source, self.what, self.fallback)
            except OSError as e:  # an unwritable cache, a library that does not load
                print(f"yoloq: {self.what} unavailable ({e}); using {self.fallback}", file=sys.stderr)
                library = None
            if library is not None:
                self.declare(library)
            self._library = library or False
        return self._library or None

    def available(self) -> bool:
        return self.library() is not None

    @contextlib.contextmanager
    def disabled(self):
        """The callers' fallback inside this block, as where no compiler works (benchmarks' baselines, tests)."""
        saved, self._library = self._library, False
        try:
            yield
        finally:
            self._library = saved


_pool: ThreadPoolExecutor | None = None


def run_split(function, args: tuple, groups: int, second: int, work: int) -> None:
    """``function(*args, lo, hi, lo2, hi2)`` over [groups, second] in disjoint ranges on the torch thread count:
    ranges of groups, or, with fewer groups than pieces, of the second axis (0: it cannot be split). ``work`` (about
    the element visits of the whole call) sets the number of pieces: none below :data:`PIECE_WORK` (a thread's
    wake-up costs more), else up to :data:`PIECES_PER_THREAD` per thread, taken in turn by the threads, so that a
    thread slowed by another process on its core leaves its remaining pieces to the others."""
    import torch

    global _pool
    threads = max(1, torch.get_num_threads())
    pieces = min(threads * PIECES_PER_THREAD, work // PIECE_WORK)
    if threads == 1 or pieces < 2:
        function(*args, 0, groups, 0, second)
        return
    if groups >= pieces or second == 0:
        pieces = min(pieces, groups)
        cuts = [(groups * i // pieces, groups * (i + 1) // pieces, 0, second) for i in range(pieces)]
    else:
        pieces = min(pieces, second)
        cuts = [(0, groups, second * i // pieces, second * (i + 1) // pieces) for i in range(pieces)]
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads)
    for job in [_pool.submit(function, *args, *cut) for cut in cuts]:
        job.result()
