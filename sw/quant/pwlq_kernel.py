"""PWLQ's inner loops, compiled: the whole breakpoint search of each group, its scorer (the squared error of C
candidate breakpoints for each of G groups, every member of every group scored), the groups' max and standard
deviation, and rounding to codes and back, fused.

Why compiled: the search scores 50-80 candidates per group on every weight (36.9M in YOLOv7). As torch ops
each candidate costs about ten passes over memory; here each group's members are read once into cache and
every candidate is scored in one fused, vectorised loop. The arithmetic is :func:`sw.quant.pwlq.squared_error`'s,
operation for operation (steps in double, rounded to float; then float division, round half to even, no fused
multiply-add), so the two agree on every member's error; only the order of the final sums differs (float32
blocks of 4096 added in float64). :func:`search` runs :func:`sw.quant.pwlq._search_rows`' path and selection
rule per group (the torch glue between its stages cost more than the scoring: for channel-wise 3x3, 3.5M
groups of 9 weights); it returns the same breakpoints as that function does with this scorer (tests compare
them with ==), handing back the rare groups where torch.topk's order on ties decides. :func:`stats` gives
torch's own max and unbiased std bit for bit; :func:`round_to_levels` and :func:`dequantize` exactly what their
torch namesakes in :mod:`sw.quant.pwlq` give, in one pass instead of ten, straight in the conv weight's layout.

Built, loaded and run on threads as every compiled kernel of yoloq is (:mod:`sw.ckernel`); where no compiler
works, every function returns None and the caller uses torch.
"""

from __future__ import annotations

import ctypes

import torch

from ..ckernel import CompiledKernel, run_split

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

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

/* Per group: m = max |w| and torch's unbiased standard deviation, bit for bit: Welford's update in double over
   the members in order, sqrt in double, rounded to float (torch's CPU std of one dimension below its 32768-member
   grain size, which quantize_tensor's groups are; tests compare the two). One member: NaN. Rows g0..g1-1, LANES
   at a time, one per vector lane (each row's update is a chain of dependent divisions). */
#define LANES 8
void pwlq_stats(const float *w, int64_t n_members, float *absmax, float *std, int64_t g0, int64_t g1, int64_t u0,
                int64_t u1) {
    (void)u0; (void)u1;
    for (int64_t gb = g0; gb < g1; gb += LANES) {
        const int64_t nb = gb + LANES <= g1 ? LANES : g1 - gb;
        const float *row[LANES];
        double mean[LANES], m2[LANES];
        float top[LANES];
        for (int64_t b = 0; b < LANES; ++b) {
            row[b] = w + (gb + (b < nb ? b : 0)) * n_members;
            mean[b] = m2[b] = 0.0;
            top[b] = 0.0f;
        }
        for (int64_t n = 0; n < n_members; ++n) {
#pragma omp simd
            for (int64_t b = 0; b < LANES; ++b) {
                const float a = row[b][n];
                const double v = a, delta = v - mean[b];
                mean[b] += delta / (double)(n + 1);
                m2[b] += delta * (v - mean[b]);
                top[b] = fabsf(a) > top[b] ? fabsf(a) : top[b];
            }
        }
        for (int64_t b = 0; b < nb; ++b) {
            absmax[gb + b] = top[b];
            std[gb + b] = (float)sqrt(m2[b] / (n_members > 1 ? (double)(n_members - 1) : 0.0));
        }
    }
}

static int64_t first_min(const double *e, int64_t n) {   /* torch.min / argmin: the first index of the least */
    int64_t i = 0;
    for (int64_t k = 1; k < n; ++k)
        if (e[k] < e[i]) i = k;
    return i;
}

static double clamp(double x, double lo, double hi) { x = x < lo ? lo : x; return x > hi ? hi : x; }

/* err[b C + c]: the squared error of group b of a block of `lanes` groups at candidate p[b C + c]. Long rows:
   pwlq_scores, group by group (its sums, whose order its vectorised loop sets), x holding the rows. Short rows
   (under 16 members, which pwlq_scores adds one after another): LANES groups side by side, one per vector
   lane, x holding member n of group b at x[n LANES + b]; the same arithmetic as pwlq_scores, the same sums. */
static void score_block(const float *x, int64_t n_members, int64_t lanes, const double *M, const double *p,
                        int64_t C, int bits, double *err) {
    if (lanes == 1) {
        pwlq_scores(x, n_members, M, p, C, bits, err, 0, 1, 0, C);
        return;
    }
    const double centre_levels = (double)((1 << bits) - 1), tail_steps = (double)((1 << (bits - 1)) - 1);
    float P[LANES], Sc[LANES], St[LANES], acc[LANES];
    double q[LANES];
    for (int64_t c = 0; c < C; ++c) {
        for (int64_t b = 0; b < LANES; ++b) q[b] = p[b * C + c];
#pragma omp simd
        for (int64_t b = 0; b < LANES; ++b) {
            const double pd = q[b] < M[b] ? q[b] : M[b];
            const double scd = 2 * pd / centre_levels, std = (M[b] - pd) / tail_steps;
            P[b] = (float)pd;
            Sc[b] = scd > 0 ? (float)scd : 1.0f;
            St[b] = std > 0 ? (float)std : 1.0f;
            acc[b] = 0.0f;
        }
        for (int64_t n = 0; n < n_members; ++n) {
#pragma omp simd
            for (int64_t b = 0; b < LANES; ++b) acc[b] += err2(x[n * LANES + b], P[b], Sc[b], St[b]);
        }
        for (int64_t b = 0; b < LANES; ++b) err[b * C + c] = acc[b];
    }
}

/* sw.quant.pwlq._search_rows, group by group (that function is the definition; this is its transcription,
   candidate for candidate, scored with pwlq_scores' arithmetic and sums, so the two return the same
   breakpoints): coarse fractions f (p = m f), p = m and the approximated breakpoint (clipped to m); the lattice
   +-steps around the best coarse fraction; the `windows` least of {best coarse, lattice}, in order of error,
   each get the +-fine lattice. Lattices are clipped to [lo, hi]. The least error wins, the first on ties (as
   torch.min), and a later stage only when strictly less. torch.topk's choice and order of the windows are
   undefined on ties: a group whose windows tie (and that could still improve) gets NaN, and the caller asks
   the torch path, the definition. So does every group when memory for the members' copy is lacking.
   w: [G, N] row-major (signed: |w| is taken here); m, approx, best: [G]. Rows g0..g1-1, in blocks of LANES
   groups for short rows (the last block padded with copies of its first group), else one by one. */
void pwlq_search(const float *w, int64_t n_members, const double *m, const double *approx, int bits,
                 int64_t windows, const double *fractions, int64_t n_fractions, const double *steps,
                 const double *fine_steps, int64_t n_steps, double lo, double hi, double *best, int64_t g0,
                 int64_t g1, int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    const int64_t lanes = n_members < 16 ? LANES : 1, C1 = n_fractions + 2, C3 = windows * n_steps;
    double p[LANES * (MAX_WINDOWS * MAX_STEPS + 2)], err[LANES * (MAX_WINDOWS * MAX_STEPS + 2)];
    double M[LANES], bp[LANES], be[LANES], coarse_err[LANES], frac[LANES][MAX_STEPS + 1], val[MAX_STEPS + 1],
        centre[LANES][MAX_WINDOWS];
    int tie[LANES], taken[MAX_STEPS + 1];
    int64_t chosen[MAX_WINDOWS];
    float *x = malloc((size_t)(lanes * n_members) * sizeof(float));
    if (x == NULL) {
        for (int64_t g = g0; g < g1; ++g) best[g] = NAN;
        return;
    }
    for (int64_t gb = g0; gb < g1; gb += lanes) {
        const int64_t nb = gb + lanes <= g1 ? lanes : g1 - gb;
        for (int64_t b = 0; b < lanes; ++b) {
            const int64_t g = gb + (b < nb ? b : 0);
            const float *row = w + g * n_members;
            M[b] = m[g];
            for (int64_t n = 0; n < n_members; ++n) x[lanes == 1 ? n : n * LANES + b] = fabsf(row[n]);
            /* coarse stage, p = m, approx */
            double *q = p + b * C1;
            for (int64_t k = 0; k < n_fractions; ++k) q[k] = M[b] * fractions[k];
            q[n_fractions] = M[b];
            q[n_fractions + 1] = approx[g] < M[b] ? approx[g] : M[b];
        }
        score_block(x, n_members, lanes, M, p, C1, bits, err);
        for (int64_t b = 0; b < lanes; ++b) {
            const double *e = err + b * C1;
            int64_t i = first_min(e, C1);
            bp[b] = p[b * C1 + i];
            be[b] = e[i];
            i = first_min(e, n_fractions);
            frac[b][0] = fractions[i];
            coarse_err[b] = e[i];
        }
        for (int64_t b = 0; b < lanes; ++b)   /* the lattice around the best coarse fraction */
            for (int64_t k = 0; k < n_steps; ++k)
                p[b * n_steps + k] = M[b] * (frac[b][k + 1] = clamp(frac[b][0] + steps[k], lo, hi));
        score_block(x, n_members, lanes, M, p, n_steps, bits, err);
        for (int64_t b = 0; b < lanes; ++b) {
            const double *e = err + b * n_steps;
            const int64_t i = first_min(e, n_steps);
            if (e[i] < be[b]) bp[b] = p[b * n_steps + i], be[b] = e[i];
            /* the fine lattices around the `windows` least so far, in order of error */
            val[0] = coarse_err[b];
            for (int64_t k = 0; k < n_steps; ++k) val[k + 1] = e[k];
            for (int64_t c = 0; c <= n_steps; ++c) taken[c] = 0;
            for (int64_t k = 0; k < windows; ++k) {
                int64_t j = -1;
                for (int64_t c = 0; c <= n_steps; ++c)
                    if (!taken[c] && (j < 0 || val[c] < val[j])) j = c;
                taken[j] = 1;
                chosen[k] = j;
            }
            /* the windows' order, or the last one's choice, is not unique */
            tie[b] = 0;
            for (int64_t k = 1; k < windows; ++k) tie[b] |= val[chosen[k]] == val[chosen[k - 1]];
            for (int64_t c = 0; c <= n_steps; ++c) tie[b] |= !taken[c] && val[c] == val[chosen[windows - 1]];
            tie[b] &= be[b] > 0.0;   /* be = 0 (all-zero groups among them): nothing later can win */
            for (int64_t k = 0; k < windows; ++k) centre[b][k] = frac[b][chosen[k]];
        }
        for (int64_t b = 0; b < lanes; ++b)
            for (int64_t k = 0; k < windows; ++k)
                for (int64_t s = 0; s < n_steps; ++s)
                    p[b * C3 + k * n_steps + s] = M[b] * clamp(centre[b][k] + fine_steps[s], lo, hi);
        score_block(x, n_members, lanes, M, p, C3, bits, err);
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t i = first_min(err + b * C3, C3);
            if (err[b * C3 + i] < be[b]) bp[b] = p[b * C3 + i];
            best[gb + b] = tie[b] ? NAN : bp[b];
        }
    }
    free(x);
}

/* Weight layout: a tensor [O, C, S], row-major, whose element (o, c, s) belongs to group o so + c sc + s ss
   (from sw.quant.granularity.group_strides, with dimensions merged where the strides allow, so that the inner
   runs are long); rows [G, N] are [1, G, N] with strides (0, 1, 0). The kernels below read and write that
   layout directly: no transposes for F-shape and C-shape groups. They take ranges of the flat index i0..i1-1. */
#define LAYOUT_LOOP(LOAD, ...)                                                                            \
    const int64_t C = dims[1], S = dims[2], step_o = strides[0], step_c = strides[1], step_s = strides[2]; \
    for (int64_t i = i0; i < i1;) {                                                                        \
        const int64_t o = i / (C * S), c = i / S % C, s0 = i % S, run = S - s0 < i1 - i ? S - s0 : i1 - i; \
        const int64_t gbase = o * step_o + c * step_c;                                                     \
        if (step_s == 0) { /* one group over the run: its parameters loaded once (codes alias anything) */ \
            const int64_t g = gbase;                                                                       \
            LOAD                                                                                           \
            for (int64_t at = i; at < i + run; ++at) { __VA_ARGS__ }                                       \
        } else                                                                                             \
            for (int64_t k = 0; k < run; ++k) {                                                            \
                const int64_t g = gbase + (s0 + k) * step_s, at = i + k;                                  \
                LOAD                                                                                       \
                __VA_ARGS__                                                                                \
            }                                                                                              \
        i += run;                                                                                          \
    }

/* Each group's grid as squared_error rounds it to float: p (at most m), s_c, s_t (1 where unused). */
void pwlq_grid(const double *m, const double *p, int bits, float *P, float *Sc, float *St, int64_t g0, int64_t g1,
               int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    const double centre_levels = (double)((1 << bits) - 1), tail_steps = (double)((1 << (bits - 1)) - 1);
    for (int64_t g = g0; g < g1; ++g) {
        const double M = m[g], pd = p[g] < M ? p[g] : M;
        const double scd = 2 * pd / centre_levels, std = (M - pd) / tail_steps;
        P[g] = (float)pd;
        Sc[g] = scd > 0 ? (float)scd : 1.0f;
        St[g] = std > 0 ? (float)std : 1.0f;
    }
}

/* sw.quant.pwlq.round_to_levels, fused: codes (tails packed, sign in the top bit) and region bits of w on each
   group's grid (pwlq_grid's), in the layout (dims, strides) above. */
void pwlq_round(const float *w, const int64_t *dims, const int64_t *strides, const float *P, const float *Sc,
                const float *St, int bits, int8_t *codes, uint8_t *region, int64_t i0, int64_t i1, int64_t u0,
                int64_t u1) {
    (void)u0; (void)u1;
    const float top = (float)((1 << (bits - 1)) - 1);
    const int half = 1 << (bits - 1);
#define ROUND_LOAD const float Pg = P[g], Scg = Sc[g], Stg = St[g];
    LAYOUT_LOOP(ROUND_LOAD,
        const float v = w[at], a = fabsf(v);
        const int tail = a >= Pg;
        float centre = nearbyintf(a / Scg);
        centre = centre > top ? top : centre;
        float j = nearbyintf((a - Pg) / Stg);
        j = j < 0.0f ? 0.0f : (j > top ? top : j);
        int code;
        if (tail) code = v < 0 ? (int)j - half : (int)j;
        else code = v < 0 ? -(int)centre : (int)centre;
        codes[at] = (int8_t)code;
        region[at] = (uint8_t)tail;
    )
}

/* sw.quant.pwlq.dequantize, fused: centre s_c q, tail sgn (p + j s_t), in double, rounded once to float; the
   layout as pwlq_round's. */
void pwlq_dequantize(const int8_t *codes, const uint8_t *region, const int64_t *dims, const int64_t *strides,
                     const double *sc, const double *st, const double *p, int bits, float *out, int64_t i0,
                     int64_t i1, int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    const int half = 1 << (bits - 1);
#define DEQUANTIZE_LOAD const double Scg = sc[g], Stg = st[g], Pg = p[g];
    LAYOUT_LOOP(DEQUANTIZE_LOAD,
        const int q = codes[at];
        double magnitude;
        if (region[at]) magnitude = (double)(q < 0 ? q + half : q) * Stg + Pg;
        else magnitude = (double)(q < 0 ? -q : q) * Scg;
        out[at] = (float)(q < 0 ? -magnitude : magnitude);
    )
}
"""
# the candidate arrays' bounds (pwlq_search's stack), in the source itself so that the cache key covers them
MAX_STEPS, MAX_WINDOWS = 32, 8
SOURCE = f"#define MAX_STEPS {MAX_STEPS}\n#define MAX_WINDOWS {MAX_WINDOWS}\n" + _SOURCE
# torch's CPU reductions split one row between threads from this many members on (at::internal::GRAIN_SIZE).
STD_GRAIN = 32768


def _declare(library: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    library.pwlq_round.restype = library.pwlq_dequantize.restype = library.pwlq_grid.restype = None
    library.pwlq_grid.argtypes = [ptr, ptr, ctypes.c_int, ptr, ptr, ptr, i64, i64, i64, i64]
    library.pwlq_round.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int, ptr, ptr, i64, i64, i64, i64]
    library.pwlq_dequantize.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, ctypes.c_int, ptr, i64, i64, i64, i64]
    library.pwlq_scores.restype = library.pwlq_stats.restype = library.pwlq_search.restype = None
    library.pwlq_scores.argtypes = [ptr, i64, ptr, ptr, i64, ctypes.c_int, ptr, i64, i64, i64, i64]
    library.pwlq_stats.argtypes = [ptr, i64, ptr, ptr, i64, i64, i64, i64]
    library.pwlq_search.argtypes = [ptr, i64, ptr, ptr, ctypes.c_int, i64, ptr, i64, ptr, ptr, i64, ctypes.c_double,
                                    ctypes.c_double, ptr, i64, i64, i64, i64]


KERNEL = CompiledKernel("pwlq_kernel", SOURCE, "the PWLQ search kernel", "the slower torch scorer", _declare)
available, disabled = KERNEL.available, KERNEL.disabled


def scores(absw: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int) -> torch.Tensor | None:
    """Squared error [G, C] (float64) of ``absw`` [G, N] (float32 |w|) at C candidate breakpoints ``p`` [G, C]
    per group (float64, clipped to ``absmax`` [G, 1]); None where the kernel cannot be built."""
    library = KERNEL.library()
    if library is None:
        return None
    absw = absw.float().contiguous()
    m, p = absmax.double().contiguous(), p.double().contiguous()
    groups, members = absw.shape
    out = torch.empty(groups, p.shape[1], dtype=torch.float64)
    run_split(library.pwlq_scores, (absw.data_ptr(), members, m.data_ptr(), p.data_ptr(), p.shape[1], bits,
                               out.data_ptr()), groups, p.shape[1], absw.numel() * p.shape[1])
    return out


def stats(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(max |w|, unbiased standard deviation) per row of float32 ``w`` [G, N], both [G, 1] float32, in one pass,
    equal to ``w.abs().amax(1)`` and ``w.std(1)`` (NaN for one member); None without the kernel, and for rows
    of :data:`STD_GRAIN` members or more (where torch's std splits a row between threads: other sums)."""
    library = KERNEL.library()
    if library is None or w.dtype != torch.float32 or w.shape[1] >= STD_GRAIN:
        return None
    w = w.contiguous()
    absmax = torch.empty(w.shape[0], 1, dtype=torch.float32)
    std = torch.empty(w.shape[0], 1, dtype=torch.float32)
    run_split(library.pwlq_stats, (w.data_ptr(), w.shape[1], absmax.data_ptr(), std.data_ptr()), w.shape[0], 0,
         w.numel())
    return absmax, std


def search(w: torch.Tensor, absmax: torch.Tensor, approx: torch.Tensor, bits: int, windows: int,
           fractions: tuple[float, ...], steps: tuple[float, ...], fine_steps: tuple[float, ...],
           lo: float, hi: float) -> torch.Tensor | None:
    """Breakpoints [G, 1] (float64) of float32 ``w`` [G, N] (signed) by :func:`sw.quant.pwlq._search_rows`'s
    path and rule (its arguments: the coarse ``fractions``, the lattice ``steps`` and ``fine_steps``, the clip
    [``lo``, ``hi``], ``windows``), each group searched whole in the kernel; ``absmax`` and ``approx`` [G, 1].
    NaN for the (rare) groups whose fine windows tie, which the caller must search with torch's rule. None
    without the kernel, or with fewer groups than threads (one group cannot be split between them: the
    caller's torch path scores its candidates in parallel instead)."""
    library = KERNEL.library()
    if library is None or w.dtype != torch.float32 or w.shape[0] < max(1, torch.get_num_threads()):
        return None
    if not (len(steps) == len(fine_steps) <= MAX_STEPS and len(fractions) + 2 <= MAX_STEPS
            and 1 <= windows <= min(MAX_WINDOWS, len(steps) + 1)):
        raise ValueError(f"search lattice beyond the kernel's arrays ({MAX_STEPS} steps, {MAX_WINDOWS} windows)")
    w = w.contiguous()
    m, approx = absmax.double().contiguous(), approx.double().contiguous()
    table = torch.tensor([*fractions, *steps, *fine_steps], dtype=torch.float64)
    f_at, s_at, fine_at = (table.data_ptr() + 8 * i for i in (0, len(fractions), len(fractions) + len(steps)))
    best = torch.empty(w.shape[0], 1, dtype=torch.float64)
    run_split(library.pwlq_search, (w.data_ptr(), w.shape[1], m.data_ptr(), approx.data_ptr(), bits, windows, f_at,
                               len(fractions), s_at, fine_at, len(steps), lo, hi, best.data_ptr()), w.shape[0], 0,
         w.numel() * (len(fractions) + 2 + (1 + windows) * len(steps)))
    return best


def _layout(w: torch.Tensor, strides: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, C, S) and (so, sc, ss) of rows [G, N] (``strides`` None) or of a conv weight [o, c, h, w] with its
    groups' ``strides`` over (o, c, h, w) (:func:`sw.quant.granularity.group_strides`), dimensions of one
    dropped and neighbours merged where the group strides allow (filter-wise: [o, c h w]; F-shape: [o, c h w]
    with the group the position in a filter), so that the kernels' inner runs are long."""
    if strides is None:
        sizes, steps = [w.shape[0], w.shape[1]], [1, 0]
    else:
        sizes, steps = list(w.shape), list(strides)
    kept = [(n, s) for n, s in zip(sizes, steps) if n != 1]
    merged: list[list[int]] = []
    for n, s in kept:
        if merged and merged[-1][1] == n * s:  # the outer dimension continues the inner one's groups
            merged[-1] = [merged[-1][0] * n, s]
        else:
            merged.append([n, s])
    if len(merged) > 3:
        raise ValueError(f"group strides {strides} of shape {tuple(w.shape)}: not a layout the kernels read")
    merged = [[1, 0]] * (3 - len(merged)) + merged
    return torch.tensor([n for n, _ in merged]), torch.tensor([s for _, s in merged])


def _check_groups(dims: torch.Tensor, steps: torch.Tensor, groups: int) -> None:
    """The kernels index the per-group arrays unchecked: the layout's last group must be among ``groups``."""
    if int(((dims - 1) * steps).sum()) >= groups:
        raise ValueError(f"layout {dims.tolist()} (group strides {steps.tolist()}) needs more than {groups} groups")


def round_to_levels(w: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int,
                    strides: tuple[int, ...] | None = None):
    """(int8 codes, bool tail mask) of float32 ``w`` as :func:`sw.quant.pwlq.round_to_levels` gives them for the
    parameters of ``absmax`` and ``p`` ([G, 1], float64), in w's layout: rows [G, N], or, with the groups'
    ``strides``, a conv weight [o, c, h, w]. None without the kernel."""
    library = KERNEL.library()
    if library is None or w.dtype != torch.float32:
        return None
    w = w.contiguous()
    dims, steps = _layout(w, strides)
    m, p = absmax.double().contiguous(), p.double().contiguous()
    _check_groups(dims, steps, min(m.numel(), p.numel()))
    grid = torch.empty(3, m.shape[0], dtype=torch.float32)
    run_split(library.pwlq_grid, (m.data_ptr(), p.data_ptr(), bits, grid[0].data_ptr(), grid[1].data_ptr(),
                             grid[2].data_ptr()), m.shape[0], 0, m.shape[0])
    codes = torch.empty(w.shape, dtype=torch.int8)
    tail = torch.empty(w.shape, dtype=torch.bool)
    run_split(library.pwlq_round, (w.data_ptr(), dims.data_ptr(), steps.data_ptr(), grid[0].data_ptr(),
                              grid[1].data_ptr(), grid[2].data_ptr(), bits, codes.data_ptr(), tail.data_ptr()),
         w.numel(), 0, w.numel())
    return codes, tail


def dequantize(codes: torch.Tensor, tail: torch.Tensor, s_c: torch.Tensor, s_t: torch.Tensor, p: torch.Tensor,
               bits: int, strides: tuple[int, ...] | None = None) -> torch.Tensor | None:
    """Float32 weights from int8 ``codes`` and the ``tail`` mask, as :func:`sw.quant.pwlq.dequantize` gives them
    rounded to float32, in the codes' layout (rows [G, N], or with the groups' ``strides`` a conv weight
    [o, c, h, w]); None without the kernel."""
    library = KERNEL.library()
    if library is None or codes.dtype != torch.int8:
        return None
    codes, tail = codes.contiguous(), tail.contiguous()
    dims, steps = _layout(codes, strides)
    s_c, s_t, p = (t.double().contiguous() for t in (s_c, s_t, p))
    if tail.shape != codes.shape or tail.dtype != torch.bool:
        raise ValueError(f"region mask {tuple(tail.shape)} {tail.dtype} does not match codes {tuple(codes.shape)}")
    _check_groups(dims, steps, min(s_c.numel(), s_t.numel(), p.numel()))
    out = torch.empty(codes.shape, dtype=torch.float32)
    run_split(library.pwlq_dequantize, (codes.data_ptr(), tail.data_ptr(), dims.data_ptr(), steps.data_ptr(),
                                   s_c.data_ptr(), s_t.data_ptr(), p.data_ptr(), bits, out.data_ptr()),
         codes.numel(), 0, codes.numel())
    return out
