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
follows the authors' coarse-to-fine search (p / m in steps of 0.1, then 0.01 around the best, then 0.001 around
the three best points so far, each candidate scored by the squared error of the whole group), for all groups
of a layer at once; it also scores p = m (full-range symmetric, with +-m exact) and the approximated
breakpoint, so it is never worse than either.
"""

from __future__ import annotations

import torch

from . import pwlq_kernel
from .granularity import from_groups, group_strides, to_groups

# The authors' constants (paper-figures.md, "PWLQ as its authors define it"); p / sigma = ln(A m / sigma + B).
APPROX_SLOPE = 0.86143114
APPROX_INTERCEPT = 0.607901097496529
# Coarse-to-fine search over p / m: the first stage's fractions, then +-(1..9) steps of COARSE_STEP around the
# best, then +-(1..9) steps of FINE_STEP around each of the FINE_WINDOWS best points at COARSE_STEP resolution.
COARSE_FRACTIONS = tuple(i / 10 for i in range(1, 10))
COARSE_STEP, FINE_STEP = 0.01, 0.001
REACH = 9
FINE_WINDOWS = 3
# Groups of at most this many members (channel-wise 3x3, where most of a model's weights then sit) refine around
# the best point only, the authors' own path (45 scorings instead of 81).
SHORT_GROUP = 9
# Members searched at a time: the search's per-candidate arrays of that many groups then stay in cache (channel-
# wise layers hold up to half a million 9-weight groups).
CHUNK_MEMBERS = 1 << 18


def group_stats(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m = max |w|, unbiased standard deviation) of every group (row) of ``g`` [G, N], both [G, 1] in g's dtype;
    the deviation is NaN for one-member groups (the authors' approximation then has none: p = m). One pass in
    the compiled kernel where it gives torch's own values (float32 rows below its grain), else torch's."""
    fused = pwlq_kernel.stats(g)
    if fused is not None:
        return fused
    m = g.abs().amax(1, keepdim=True)
    return m, (g.std(1, keepdim=True) if g.shape[1] > 1 else torch.full_like(m, float("nan")))


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


def quantize(w: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int, granularity: str | None = None):
    """Codes (packed for tails; int8 from the compiled kernel, else in w's float dtype), tail mask, and the group
    parameters (s_c, s_t, p).

    ``w`` is [G, N] (a group per row), or, with ``granularity``, the conv weight [o, c, h, w] itself, whose
    groups are :func:`~sw.quant.granularity.to_groups`' rows: codes and mask then come in w's layout. ``absmax``
    and ``p`` are [G, 1]. ``p`` is returned as float64 [G, 1].
    """
    p = p.double().minimum(absmax.double())
    s_c, s_t = pwlq_params(absmax, p, bits)
    strides = None if granularity is None else group_strides(tuple(w.shape), granularity)
    fused = pwlq_kernel.round_to_levels(w, absmax, p, bits, strides)
    if fused is not None:
        return (*fused, s_c, s_t, p)
    if granularity is None:
        return (*round_to_levels(w, s_c, s_t, p, bits), s_c, s_t, p)
    codes, tail = round_to_levels(to_groups(w, granularity), s_c, s_t, p, bits)
    shape = tuple(w.shape)
    return from_groups(codes, shape, granularity), from_groups(tail, shape, granularity), s_c, s_t, p


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
                  scratch: Scratch | None = None) -> torch.Tensor:
    """Sum of squared PWLQ errors per group (row) of ``absw`` = |w| [G, N], without building codes; ``absmax``
    and ``p`` are [G, 1]. Returns [G, 1] float64.

    Each region rounds d onto multiples of its step s (centre: d = |w|, s = s_c; tail: d = |w| - p, s = s_t,
    both from :func:`pwlq_params`), and both grids contain their end points (p and m are tail levels), so the
    error is d - s round(d / s); the code clamps only ever act on exact ties, where both neighbours are
    equally far. In place: few passes over memory. :mod:`sw.quant.pwlq_kernel` computes the same per member.
    """
    sc = scratch or Scratch(absw)
    dt = absw.dtype
    s_c, s_t = (s.to(dt) for s in pwlq_params(absmax, p, bits))
    p = p.to(dt)
    torch.ge(absw, p, out=sc.mask)
    step = torch.where(sc.mask, s_t, s_c, out=sc.step)
    d = torch.sub(absw, torch.where(sc.mask, p, torch.zeros((), dtype=dt), out=sc.err), out=sc.err)
    rounded = torch.div(d, step, out=sc.tmp).round_().mul_(step)
    err = d.sub_(rounded).square_()
    return err.sum(1, keepdim=True).double()  # float32 partial sums: fine for ranking


def candidate_errors(absw: torch.Tensor, absmax: torch.Tensor, p: torch.Tensor, bits: int) -> torch.Tensor:
    """Squared error [G, C] (float64) of every group (row of ``absw`` = |w|, float32 [G, N]) at each of its C
    candidate breakpoints ``p`` [G, C] (float64; above m counts as m), scored on every member: by the compiled
    kernel (:mod:`sw.quant.pwlq_kernel`), else by :func:`squared_error` one candidate at a time."""
    fast = pwlq_kernel.scores(absw, absmax, p, bits)
    if fast is not None:
        return fast
    p = p.double().minimum(absmax.double())
    scratch = Scratch(absw)
    return torch.cat([squared_error(absw, absmax, p[:, i:i + 1], bits, scratch) for i in range(p.shape[1])], 1)


def _steps(step: float) -> tuple[float, ...]:
    """A lattice's offsets from its centre: i step for i = -REACH .. -1, 1 .. REACH."""
    return tuple(i * step for i in (*range(-REACH, 0), *range(1, REACH + 1)))


def _lattice(centres: torch.Tensor, step: float) -> torch.Tensor:
    """[G, K * 2 REACH] fractions centre + i step (:func:`_steps`), for each of K centres per group, clipped to
    [0.001, 1]."""
    offsets = torch.tensor(_steps(step), dtype=torch.float64)
    return (centres.unsqueeze(2) + offsets).reshape(centres.shape[0], -1).clamp_(FINE_STEP, 1.0)


def search_breakpoint(w: torch.Tensor, absmax: torch.Tensor, bits: int,
                      approx: torch.Tensor | None = None) -> torch.Tensor:
    """Per-group breakpoint [G, 1] (float64) of least squared error, for all groups of a layer at once, every
    candidate scored on every member of its group.

    The path: p / m in 0.1 .. 0.9 (the authors' coarse stage), then +-0.01 .. 0.09 around the best (theirs),
    then +-0.001 .. 0.009 around each of the :data:`FINE_WINDOWS` best points of the 0.01 lattice so far (the
    authors refine around the best one only: at k = 6 the error is jagged at the 0.01 m scale, and their path
    then ends up to 0.5% above an exhaustive 0.001 m scan; three windows come within 0.1%); 81 scorings.
    Groups of at most :data:`SHORT_GROUP` members (channel-wise 3x3) refine around the best point only, as
    the authors (45 scorings). p = m (full-range symmetric) and ``approx`` (default:
    :func:`approx_breakpoint`) are scored too, and the least error of all wins, so the result is never worse
    than either, and never worse than the authors' own search (a subset of this one's candidates).

    :func:`_search_rows` is the definition (torch glue around the compiled scorer, or torch's where no C compiler
    works). With the compiler, :func:`sw.quant.pwlq_kernel.search` runs the same path group by group, with the
    same rule on ties (the first least error wins; a later stage only when strictly less), and hands back the
    groups whose fine windows tie, as torch.topk orders ties its own (undefined) way; those go through
    :func:`_search_rows`. Both give the same breakpoints.
    """
    if approx is None:
        approx = approx_breakpoint(absmax, group_stats(w)[1])
    windows = 1 if w.shape[1] <= SHORT_GROUP else FINE_WINDOWS
    fused = pwlq_kernel.search(w, absmax, approx, bits, windows, COARSE_FRACTIONS, _steps(COARSE_STEP),
                               _steps(FINE_STEP), FINE_STEP, 1.0)
    if fused is not None:
        tied = fused.isnan().nonzero()[:, 0]  # the torch rule decides these (topk's order on ties)
        if len(tied):
            fused[tied] = _search_rows(w[tied], absmax[tied], bits, approx[tied], windows)
        return fused
    rows = max(1, CHUNK_MEMBERS // w.shape[1])   # groups are independent: search them in cache-sized chunks
    return torch.cat([_search_rows(w[i:i + rows], absmax[i:i + rows], bits, approx[i:i + rows], windows)
                      for i in range(0, w.shape[0], rows)])


def _search_rows(w: torch.Tensor, absmax: torch.Tensor, bits: int, approx: torch.Tensor, windows: int) -> torch.Tensor:
    absw = w.abs().float().contiguous()
    m = absmax.double()
    best = best_err = None

    def score(p: torch.Tensor) -> torch.Tensor:   # keeps the least-error candidate of every group so far
        nonlocal best, best_err
        err = candidate_errors(absw, m, p, bits)
        least, i = err.min(1, keepdim=True)
        if best is None:
            best, best_err = p.gather(1, i), least
        else:
            better = least < best_err
            best, best_err = torch.where(better, p.gather(1, i), best), torch.where(better, least, best_err)
        return err

    coarse = torch.tensor(COARSE_FRACTIONS, dtype=torch.float64).expand(m.shape[0], -1)
    err = score(torch.cat([m * coarse, m, approx.double().minimum(m)], 1))[:, :len(COARSE_FRACTIONS)]
    least, i = err.min(1, keepdim=True)
    path = coarse.gather(1, i)   # the best coarse fraction: where the authors' refinement starts
    frac = _lattice(path, COARSE_STEP)
    err = score(m * frac)
    top = torch.cat([least, err], 1).topk(windows, 1, largest=False).indices
    score(m * _lattice(torch.cat([path, frac], 1).gather(1, top), FINE_STEP))
    return best
