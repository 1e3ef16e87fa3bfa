"""Error-compensating rounding (GPTQ / OBQ) onto a fixed grid, and bias correction.

Nearest rounding picks each weight's closest level. GPTQ (Frantar et al., 2022, after OBQ) rounds the im2col
columns of W [o, n] one at a time and spreads each column's rounding error over the columns not yet rounded,
weighted by the inverse of the layer's input second moment H = E[x x^T] (:mod:`sw.quant.calibration`), so
that the layer *output* error tr(dW H dW^T) is small rather than the weight error. Columns go in order of
decreasing H[i, i] (act order), all output channels at once.

The grid does not move: the group parameters (scales, zero-points, PWLQ breakpoints) are those nearest
rounding chose, and each weight is rounded to the nearest level of *its* group's grid (PWLQ's non-uniform
one included). Only codes (and PWLQ's region bits) change, so the record keeps the integer contract and the
artifact format.
"""

from __future__ import annotations

import torch

from . import pwlq, uniform
from .calibration import InputStats
from .granularity import group_index, to_groups
from .record import QuantizedTensor

DAMPING = 0.01   # fraction of mean(diag H) added to the diagonal (GPTQ's default)
BLOCK = 128      # columns per lazy-update block


class Grid:
    """The fixed levels of one record, as per-weight parameter matrices [o, n] (float32, im2col order)."""

    def __init__(self, qt: QuantizedTensor, w: torch.Tensor):
        o = qt.shape[0]
        ids = group_index(qt.shape, qt.granularity).reshape(o, -1)
        self.qt = qt
        self.bits = qt.bits
        if qt.region is None:
            self.s = qt.scale[:, 0][ids].float()
            self.z = qt.zero_point[:, 0][ids].float()
            self.qmin, self.qmax = uniform.code_range(qt.bits, restricted=qt.method == "symmetric")
        else:
            self.s_c, self.s_t = qt.scale[:, 0][ids].float(), qt.scale[:, 1][ids].float()
            self.p = qt.breakpoint[:, 0][ids].float()
            self.m = to_groups(w.detach().float().abs(), qt.granularity).amax(1)[ids]

    def round(self, x: torch.Tensor, cols: slice | torch.Tensor):
        """(codes, region or None, dequantized) of ``x`` [o, k], the weights of columns ``cols``."""
        if self.qt.region is None:
            s, z = self.s[:, cols], self.z[:, cols]
            q = uniform.quantize(x, s, z, self.qmin, self.qmax)
            return q, None, (q - z) * s
        s_c, s_t, p = self.s_c[:, cols], self.s_t[:, cols], self.p[:, cols]
        x = torch.maximum(torch.minimum(x, self.m[:, cols]), -self.m[:, cols])  # no level lies beyond m
        codes, tail = pwlq.round_to_levels(x, s_c, s_t, p, self.bits)
        return codes, tail, pwlq.dequantize(codes, tail, s_c, s_t, p, self.bits).float()


def _inverse_hessian_factor(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (float32), with GPTQ's damping raised until H is positive definite."""
    damp = DAMPING * float(h.diagonal().mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(h + damp * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            u, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return u.float()
        damp *= 10
    raise torch.linalg.LinAlgError("input second moment is not positive definite even after damping")


def gptq(w: torch.Tensor, qt: QuantizedTensor, stats: InputStats) -> QuantizedTensor:
    """``qt`` with its codes (and PWLQ region bits) re-chosen by GPTQ on ``w`` [o, c, kh, kw]; same parameters."""
    o = w.shape[0]
    grid = Grid(qt, w)
    h = stats.second_moment.clone()
    dead = h.diagonal() == 0          # inputs that are always 0: their weights do not matter; keep them nearest
    h[dead, dead] = 1.0
    order = torch.argsort(h.diagonal(), descending=True, stable=True)
    h = h[order][:, order]
    u = _inverse_hessian_factor(h)
    W = w.detach().float().reshape(o, -1)[:, order].clone()
    n = W.shape[1]
    codes = torch.empty_like(W)
    region = torch.empty(W.shape, dtype=torch.bool) if qt.region is not None else None
    perm_grid = _permuted(grid, order)
    for a in range(0, n, BLOCK):
        b = min(a + BLOCK, n)
        W1, U1 = W[:, a:b].clone(), u[a:b, a:b]
        err1 = torch.empty_like(W1)
        for i in range(b - a):
            col = W1[:, i]
            c, t, q = perm_grid.round(col.unsqueeze(1), slice(a + i, a + i + 1))
            codes[:, a + i] = c[:, 0]
            if region is not None:
                region[:, a + i] = t[:, 0]
            e = (col - q[:, 0]) / U1[i, i]
            W1[:, i:].sub_(e.unsqueeze(1) * U1[i, i:].unsqueeze(0))
            err1[:, i] = e
        W[:, b:].sub_(err1 @ u[a:b, b:])
    inverse = torch.argsort(order)
    codes = codes[:, inverse].reshape(qt.shape).to(torch.int8)
    if region is not None:
        region = region[:, inverse].reshape(qt.shape)
    return QuantizedTensor(qt.shape, qt.method, qt.bits, qt.granularity, codes, region, qt.scale, qt.zero_point,
                           qt.breakpoint)


def _permuted(grid: Grid, order: torch.Tensor) -> Grid:
    """``grid`` with its parameter matrices' columns in ``order`` (contiguous: each column slice is one read)."""
    g = Grid.__new__(Grid)
    g.__dict__.update(grid.__dict__)
    for k in ("s", "z", "s_c", "s_t", "p", "m"):
        if hasattr(grid, k):
            setattr(g, k, getattr(grid, k)[:, order].contiguous())
    return g


def bias_shift(w: torch.Tensor, w_hat: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """Expected output shift (W_hat - W) E[x] per output channel [o] (float32), to be subtracted from the bias."""
    o = w.shape[0]
    dw = (w_hat.double() - w.double()).reshape(o, -1)
    return (dw @ stats.mean).float()
