"""Piecewise linear quantization (PWLQ) as its authors define it (Fang et al., ECCV 2020).

Per group, with m = max|w| and a breakpoint 0 < p <= m:

- centre, |w| < p: k-bit full-range symmetric codes over [-p, p], s_c = 2p / (2^k - 1);
- tails, p <= |w| <= m: each tail piece [p, m] is uniform with offset p and scale s_t = (m - p) / (2^(k-1) - 1):
  |w_hat| = p + j s_t with j in [0, 2^(k-1) - 1] (k-1 unsigned bits), the sign of w kept beside it. Both p
  and m are levels (j = 0 and j = 2^(k-1) - 1), as in the authors' code (offset p, not the rounded integer
  zero-point of the study's eq. (8), whose grid lies up to half a step off p);
- a region bit per weight says which applies.

A tail weight's k-bit code packs the sign into its top bit and j below it, read as one signed k-bit integer
(see :func:`pack_tail`). Dequantization: centre w = s_c q; tail w = sgn (p + j s_t). The breakpoint p is thus
a stored parameter of each group, beside the two scales.

Breakpoints: :func:`approx_breakpoint` is the authors' closed form for Gaussian weights, with the unbiased
standard deviation sigma: p / sigma = ln(0.86143114 m / sigma + 0.607901097496529). :func:`search_breakpoint`
follows the authors' coarse-to-fine search (p / m in steps of 0.1, then 0.01 and 0.001 around the best so far,
each candidate scored by the squared error of the group), for all groups of a layer at once; it also scores
p = m (full-range symmetric, with +-m exact) and the approximated breakpoint, so it is never worse than either.
"""

from __future__ import annotations

import torch

# The authors' constants (paper-figures.md, "PWLQ as its authors define it"); p / sigma = ln(A m / sigma + B).
APPROX_SLOPE = 0.86143114
APPROX_INTERCEPT = 0.607901097496529
# Coarse-to-fine search over p / m: the first stage's fractions, then per stage +-(1..9) steps of this size.
COARSE_FRACTIONS = tuple(i / 10 for i in range(1, 10))
REFINE_STEPS = (0.01, 0.001)
# Members scored per layer during the path of the search, when groups are large (a layer or a filter); the
# path's winner is then compared with p = m and the approximated breakpoint on every member.
SAMPLE_BUDGET = 1 << 16
# Groups of at most this many members (channel-wise 3x3) have no sample to save their cost, so they take a
# shorter refinement after the coarse stage: +- these steps, each kept if better (21 scorings instead of 45).
SHORT_GROUP = 9
PATTERN_STEPS = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001)


def approx_breakpoint(absmax: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """p = sigma ln(0.86143114 m / sigma + 0.607901097496529), clipped to [0, m]; p = m where sigma is 0 or NaN
    (a one-weight group has no unbiased standard deviation)."""
    m, sd = absmax.double(), std.double()
    ok = sd > 0  # False for NaN too
    safe = torch.where(ok, sd, torch.ones_like(sd))
    p = safe * torch.log(APPROX_SLOPE * m / safe + APPROX_INTERCEPT)
    return torch.where(ok, p.clamp(min=0.0).minimum(m), m)


def pwlq_params(absmax: torch.Tensor, p: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_c, s_t) per group, float64. An unused part (p = 0: no centre; p = m: one tail level) gets s = 1."""
    m, p = absmax.double(), p.double()
    s_c = 2 * p / ((1 << bits) - 1)
    s_t = (m - p) / ((1 << (bits - 1)) - 1)
    one = torch.ones_like(s_c)
    return torch.where(s_c > 0, s_c, one), torch.where(s_t > 0, s_t, one)


def pack_tail(negative: torch.Tensor, j: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed k-bit code whose top bit is the tail's sign and whose low k-1 bits hold j (unsigned)."""
    return torch.where(negative, j - (1 << (bits - 1)), j)


def unpack_tail(code: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative, j) from a packed tail code."""
    return code < 0, torch.remainder(code, 1 << (bits - 1))


def quantize(w: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int):
    """Codes (packed for tails, in w's float dtype), tail mask, and the group parameters (s_c, s_t, p).

    ``w`` is [G, N]; ``absmax`` and ``p`` are [G, 1]. ``p`` is returned as float64 [G, 1].
    """
    p = p.double().minimum(absmax.double())
    s_c, s_t = pwlq_params(absmax, p, bits)
    codes, tail = round_to_levels(w, s_c, s_t, p, bits)
    return codes, tail, s_c, s_t, p


def round_to_levels(w: torch.Tensor, s_c: torch.Tensor, s_t: torch.Tensor, p: torch.Tensor, bits: int):
    """(codes, tail mask) of ``w`` on the grid of given parameters (broadcast over ``w``): the tails hold
    |w| >= p, each region rounds to its nearest level, clamped to its codes. Weights beyond m must be clipped
    to m by the caller (when p = m the tail scale is a placeholder)."""
    dt = w.dtype
    absw = w.abs()
    tail = absw >= p.to(dt)
    centre = torch.round(absw / s_c.to(dt)).clamp_(max=(1 << (bits - 1)) - 1)   # |code|, |w| < p
    j = torch.round((absw - p.to(dt)) / s_t.to(dt)).clamp_(0, (1 << (bits - 1)) - 1)
    # a negative centre weight may take code -2^(k-1) (full range): only on an exact tie, error unchanged
    codes = torch.where(tail, pack_tail(w < 0, j, bits), torch.copysign(centre, w))
    return codes, tail


def dequantize(codes: torch.Tensor, tail: torch.Tensor, s_c: torch.Tensor, s_t: torch.Tensor, p: torch.Tensor,
               bits: int) -> torch.Tensor:
    """Float64 weights from codes, region bits and group parameters (broadcast over [G, N])."""
    codes = codes.double()
    negative, j = unpack_tail(codes, bits)
    magnitude = torch.where(tail, j * s_t + p, codes.abs() * s_c)
    return torch.where(negative, -magnitude, magnitude)


class Scratch:
    """Reusable buffers for :func:`squared_error`: fresh 100 MB tensors cost more (page faults) than the math."""

    def __init__(self, like: torch.Tensor):
        self.mask = torch.empty_like(like, dtype=torch.bool)
        self.step = torch.empty_like(like)
        self.err = torch.empty_like(like)
        self.tmp = torch.empty_like(like)


def squared_error(absw: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int,
                  scratch: Scratch | None = None, members: int = 1) -> torch.Tensor:
    """Sum of squared PWLQ errors per group of ``absw`` = |w|, without building codes.

    Groups are rows ([G, N], ``members=1``, the default) or columns ([N, G], ``members=0``); ``absmax`` and
    ``p`` broadcast along the member axis. The result has the shape of ``absmax``.

    Each region rounds d onto multiples of its step s (centre: d = |w|, s = s_c; tail: d = |w| - p, s = s_t),
    and both grids contain their end points, so the error is d - s round(d / s); the code clamps only ever
    act on exact ties, where both neighbours are equally far. All in place: few passes over memory, which is
    what makes a full search affordable.
    """
    sc = scratch or Scratch(absw)
    dt = absw.dtype
    m, p = absmax.to(dt), p.to(dt)
    tiny = torch.finfo(dt).tiny  # a zero step only ever meets d = 0
    s_c = (p * (2.0 / ((1 << bits) - 1))).clamp_min_(tiny)
    s_t = ((m - p) * (1.0 / ((1 << (bits - 1)) - 1))).clamp_min_(tiny)
    torch.ge(absw, p, out=sc.mask)
    step = torch.where(sc.mask, s_t, s_c, out=sc.step)
    d = torch.sub(absw, torch.where(sc.mask, p, torch.zeros((), dtype=dt), out=sc.err), out=sc.err)
    rounded = torch.div(d, step, out=sc.tmp).round_().mul_(step)
    err = d.sub_(rounded).square_()
    return err.sum(members, keepdim=True).double()  # float32 partial sums: fine for ranking small groups


def _sample_columns(n: int, target: int) -> torch.Tensor | None:
    """A fixed pseudo-random subset of ``target`` member indices (sorted), or None for all of them.

    Random, not evenly spaced: an even stride that is a multiple of the kernel size would score one kernel
    tap only (for a 3x3 conv, tap (0, 0)), and fused RepConv layers have a centre tap ~3x larger.
    """
    if n <= target:
        return None
    g = torch.Generator().manual_seed(n)
    return torch.randperm(n, generator=g)[:target].sort().values


def _coarse_to_fine(absw: torch.Tensor, absmax: torch.Tensor, bits: int, members: int,
                    short: bool = False) -> torch.Tensor:
    """Best fraction p / m per group (shaped like ``absmax``) along the authors' coarse-to-fine path, or,
    ``short``, the coarse stage then a pattern search down to 0.001 (:data:`PATTERN_STEPS`)."""
    scratch = Scratch(absw)
    best_err = best = None
    for f in COARSE_FRACTIONS:
        err = squared_error(absw, absmax, absmax * f, bits, scratch, members)
        frac = torch.full_like(err, f)
        if best is None:
            best, best_err = frac, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, frac, best), torch.where(better, err, best_err)
    refinements = [(step, (-1, 1)) for step in PATTERN_STEPS] if short else \
        [(step, (*range(-9, 0), *range(1, 10))) for step in REFINE_STEPS]
    for step, offsets in refinements:
        centre = best.clone()
        for i in offsets:
            cand = (centre + i * step).clamp_(REFINE_STEPS[-1], 1.0)
            err = squared_error(absw, absmax, absmax * cand.to(absmax.dtype), bits, scratch, members)
            better = err < best_err
            best, best_err = torch.where(better, cand, best), torch.where(better, err, best_err)
    return best


def search_breakpoint(w: torch.Tensor, absmax: torch.Tensor, bits: int, approx: torch.Tensor | None = None,
                      sample: int = 64) -> torch.Tensor:
    """Per-group breakpoint [G, 1] (float64) of least squared error, for all groups of a layer at once.

    The path: p / m in 0.1 .. 0.9, then +-0.01 .. 0.09 and +-0.001 .. 0.009 around the best so far (45
    scorings; resolution 0.001 m), as in the authors' code; groups of at most :data:`SHORT_GROUP` members
    (channel-wise 3x3) take a shorter pattern search after the coarse stage (21 scorings, also to 0.001 m).
    It is scored on every member, or, when the layer's groups are large, on a fixed random sample of at least
    ``sample`` members per group (the same members in every group; random so that every kernel position is
    represented). The path's winner, p = m and
    ``approx`` (default: :func:`approx_breakpoint`) are then scored on every member and the least error wins,
    so the result is never worse than full-range symmetric quantization nor than the approximated breakpoint.
    """
    absw = w.abs()
    if approx is None:
        std = w.std(1, keepdim=True) if w.shape[1] > 1 else torch.full_like(absmax, float("nan"))
        approx = approx_breakpoint(absmax, std)
    cols = _sample_columns(w.shape[1], max(sample, SAMPLE_BUDGET // w.shape[0]))
    sub = absw if cols is None else absw[:, cols]
    short = w.shape[1] <= SHORT_GROUP
    if sub.shape[1] < sub.shape[0]:  # short groups: score members-first, so broadcasts run along long rows
        frac = _coarse_to_fine(sub.t().contiguous(), absmax.t(), bits, 0, short).t()
    else:
        frac = _coarse_to_fine(sub, absmax, bits, 1, short)
    m = absmax.double()
    finalists = torch.cat([m * frac.double(), m, approx.double()], 1)
    if absw.shape[1] < absw.shape[0]:
        absw, finalists_t = absw.t().contiguous(), finalists.t()
        scratch = Scratch(absw)
        full = torch.cat([squared_error(absw, absmax.t(), finalists_t[i:i + 1], bits, scratch, 0)
                          for i in range(3)], 0).t()
    else:
        scratch = Scratch(absw)
        full = torch.cat([squared_error(absw, absmax, finalists[:, i:i + 1], bits, scratch) for i in range(3)], 1)
    return finalists.gather(1, full.argmin(1, keepdim=True))
