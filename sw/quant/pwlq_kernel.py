"""The PWLQ breakpoint search's scorer, compiled: the squared error of C candidate breakpoints for each of G
groups, every member of every group scored.

Why compiled: the search scores 50-80 candidates per group on every weight (36.9M in YOLOv7). As torch ops
each candidate costs about ten passes over memory; here each group's members are read once into cache and
every candidate is scored in one fused, vectorised loop. The arithmetic is :func:`sw.quant.pwlq.squared_error`'s,
operation for operation (steps in double, rounded to float; then float division, round half to even, no fused
multiply-add), so the two agree on every member's error; only the order of the final sums differs (float32
blocks of 4096 added in float64).

The C source is built on first use with the system C compiler (``$CC``, else ``cc``) into the user's cache
(``$XDG_CACHE_HOME/yoloq``, else ``~/.cache/yoloq``), keyed by the source, the flags and the CPU, and loaded
with ctypes. Where no compiler works, :func:`scores` returns None and the caller uses the torch scorer.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* out[g, c] = sum over n of e^2, e = d - s * nearbyint(d / s): the centre (|w| < p) has d = |w|, s = s_c;
   the tail has d = |w| - p, s = s_t. The steps are sw.quant.pwlq.pwlq_params's, in double, then rounded to
   float as squared_error does. x: [G, N] row-major |w|; m: [G]; p, out: [G, C]. Rows g0..g1-1 and candidates
   c0..c1-1 only (threads take disjoint ranges). Long rows are vectorised along the members, short ones
   (channel-wise 3x3: 9 members) along the candidates. */
#define BLOCK 64

static inline float err2(float v, float P, float Sc, float St) {
    const int tail = v >= P;
    const float d = tail ? v - P : v;
    const float s = tail ? St : Sc;
    const float e = d - s * nearbyintf(d / s);
    return e * e;
}

void pwlq_scores(const float *x, int64_t n_members, const double *m, const double *p, int64_t n_cand, int bits,
                 double *out, int64_t g0, int64_t g1, int64_t c0, int64_t c1) {
    const double centre_levels = (double)((1 << bits) - 1), tail_steps = (double)((1 << (bits - 1)) - 1);
    float P[BLOCK], Sc[BLOCK], St[BLOCK], acc[BLOCK];
    for (int64_t g = g0; g < g1; ++g) {
        const float *row = x + g * n_members;
        const double M = m[g];
        for (int64_t cb = c0; cb < c1; cb += BLOCK) {
            const int64_t nc = cb + BLOCK < c1 ? BLOCK : c1 - cb;
            for (int64_t k = 0; k < nc; ++k) {
                const double pd = p[g * n_cand + cb + k] < M ? p[g * n_cand + cb + k] : M;
                const double scd = 2 * pd / centre_levels, std = (M - pd) / tail_steps;
                P[k] = (float)pd;
                Sc[k] = scd > 0 ? (float)scd : 1.0f;
                St[k] = std > 0 ? (float)std : 1.0f;
            }
            if (n_members < 16) {
                for (int64_t k = 0; k < nc; ++k) acc[k] = 0.0f;
                for (int64_t n = 0; n < n_members; ++n) {
                    const float v = row[n];
#pragma omp simd
                    for (int64_t k = 0; k < nc; ++k) acc[k] += err2(v, P[k], Sc[k], St[k]);
                }
                for (int64_t k = 0; k < nc; ++k) out[g * n_cand + cb + k] = acc[k];
                continue;
            }
            for (int64_t k = 0; k < nc; ++k) {
                double total = 0.0;
                for (int64_t b = 0; b < n_members; b += 4096) {
                    const int64_t end = b + 4096 < n_members ? b + 4096 : n_members;
                    float a = 0.0f;
#pragma omp simd reduction(+ : a)
                    for (int64_t n = b; n < end; ++n) a += err2(row[n], P[k], Sc[k], St[k]);
                    total += a;
                }
                out[g * n_cand + cb + k] = total;
            }
        }
    }
}
"""
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd",
         "-shared", "-fPIC"]

_library = None      # the loaded kernel, False once building it failed
_pool: ThreadPoolExecutor | None = None


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("model name", "flags"))), "")
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "yoloq"


def _build() -> ctypes.CDLL | None:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    key = hashlib.sha256("\0".join([SOURCE, compiler, *FLAGS, platform.machine(), _cpu_id()]).encode()).hexdigest()
    target = _cache_dir() / f"pwlq_kernel-{key[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src, lib = Path(tmp) / "pwlq_kernel.c", Path(tmp) / "pwlq_kernel.so"
            src.write_text(SOURCE)
            done = subprocess.run([compiler, *FLAGS, str(src), "-o", str(lib), "-lm"], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"yoloq: building the PWLQ search kernel failed ({compiler}); using the slower torch scorer\n"
                      f"{done.stderr.strip()}", file=sys.stderr)
                return None
            os.replace(lib, target)  # atomic: a concurrent build writes the same bytes
    library = ctypes.CDLL(str(target))
    library.pwlq_scores.restype = None
    library.pwlq_scores.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    return library


def _kernel():
    global _library
    if _library is None:
        try:
            _library = _build() or False
        except OSError as e:  # an unwritable cache, a library that does not load
            print(f"yoloq: PWLQ search kernel unavailable ({e}); using the slower torch scorer", file=sys.stderr)
            _library = False
    return _library or None


def available() -> bool:
    return _kernel() is not None


@contextlib.contextmanager
def disabled():
    """Score with torch inside this block, as where no compiler works (benchmarks' baseline, tests)."""
    global _library
    saved, _library = _library, False
    try:
        yield
    finally:
        _library = saved


def scores(absw: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int) -> torch.Tensor | None:
    """Squared error [G, C] (float64) of ``absw`` [G, N] (float32 |w|) at C candidate breakpoints ``p`` [G, C]
    per group (float64, clipped to ``absmax`` [G, 1]); None where the kernel cannot be built."""
    library = _kernel()
    if library is None:
        return None
    global _pool
    absw = absw.float().contiguous()
    m, p = absmax.double().contiguous(), p.double().contiguous()
    groups, members = absw.shape
    cand = p.shape[1]
    out = torch.empty(groups, cand, dtype=torch.float64)
    threads = max(1, torch.get_num_threads())
    if groups >= threads:   # disjoint ranges of groups, else of candidates (one group: layer-wise)
        cuts = [(groups * i // threads, groups * (i + 1) // threads, 0, cand) for i in range(threads)]
    else:
        cuts = [(0, groups, cand * i // threads, cand * (i + 1) // threads) for i in range(threads)]
    args = (absw.data_ptr(), members, m.data_ptr(), p.data_ptr(), cand, bits, out.data_ptr())
    if threads == 1:
        library.pwlq_scores(*args, *cuts[0])
    else:
        if _pool is None or _pool._max_workers != threads:
            _pool = ThreadPoolExecutor(threads)
        for job in [_pool.submit(library.pwlq_scores, *args, *cut) for cut in cuts]:
            job.result()
    return out
