"""Quantize one weight tensor with any method at any granularity, or pick the best granularity per layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import QuantizationError
from . import pwlq
from .granularity import MIXES, SINGLE, check_granularity, from_groups, to_groups
from .names import MAX_BITS, MIN_BITS  # noqa: F401 (re-exported: defined without torch for the CLI)
from .record import METHODS, QuantizedTensor
from .uniform import affine_params, code_range, quantize, symmetric_scale

BREAKPOINTS = ("search", "approx")


def check_request(method: str, bits: int, granularity: str, breakpoint: str = "search") -> None:
    if method not in METHODS:
        raise QuantizationError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantizationError(f"bit width must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    if granularity not in SINGLE and granularity not in MIXES:
        raise QuantizationError(f"unknown granularity {granularity!r}; choose one of "
                                f"{', '.join(SINGLE + tuple(MIXES))}")
    if breakpoint not in BREAKPOINTS:
        raise QuantizationError(f"unknown breakpoint mode {breakpoint!r}; choose one of {', '.join(BREAKPOINTS)}")


def _check_weight(w: torch.Tensor, name: str) -> None:
    if w.dim() != 4:
        raise QuantizationError(f"{name}: expected a conv weight W[o, c, h, w], got shape {tuple(w.shape)}")
    if not torch.isfinite(w.sum()) and not torch.isfinite(w).all():  # cheap test first; a sum may overflow
        bad = int((~torch.isfinite(w)).sum())
        raise QuantizationError(f"{name}: {bad} weight(s) are NaN or infinite; refusing to quantize")


def quantize_tensor(w: torch.Tensor, method: str, bits: int, granularity: str, breakpoint: str = "search",
                    name: str = "weight") -> QuantizedTensor:
    """Quantize ``w`` [o, c, h, w] at one granularity; returns the integer record."""
    check_request(method, bits, granularity, breakpoint)
    check_granularity(granularity)
    _check_weight(w, name)
    shape = tuple(w.shape)
    g = to_groups(w.detach().float(), granularity)
    region = bp = None
    if method == "affine":
        s, z = affine_params(g.amin(1, keepdim=True), g.amax(1, keepdim=True), bits)
        codes = quantize(g, s, z, *code_range(bits))
    elif method in ("symmetric", "symmetric-full"):
        full = method == "symmetric-full"
        absg = g.abs()
        m = absg.amax(1, keepdim=True)
        s = symmetric_scale(m, bits, full, absg.amin(1, keepdim=True) == m if full else None)
        z = torch.zeros_like(s, dtype=torch.int64)
        codes = quantize(g, s, 0, *code_range(bits, restricted=not full))
    else:
        g = g.contiguous()  # one transpose per layer (F-shape groups are strided): every pass below reads rows
        m, std = pwlq.group_stats(g)  # unbiased std, as the authors (NaN for one member: p = m)
        approx = pwlq.approx_breakpoint(m, std)
        p = approx if breakpoint == "approx" else pwlq.search_breakpoint(g, m, bits, approx)
        # codes and regions straight into the weight's layout (no transposes back)
        codes, region, s_c, s_t, bp = pwlq.quantize(w.detach().float(), m, p, bits, granularity)
        s = torch.cat([s_c, s_t], 1)
        z = torch.zeros_like(s, dtype=torch.int64)  # PWLQ has no zero-point: the tails' offset is the breakpoint
        return QuantizedTensor(shape, method, bits, granularity, codes.to(torch.int8), region, s, z, bp)
    return QuantizedTensor(shape, method, bits, granularity, from_groups(codes.to(torch.int8), shape, granularity),
                           region, s, z, bp)


@dataclass
class ErrorStats:
    mse: float
    sqnr_db: float


def error_stats(w: torch.Tensor, w_hat: torch.Tensor) -> ErrorStats:
    """MSE and SQNR (dB) of an approximation ``w_hat`` of ``w``; per-filter float32 sums added in float64."""
    w = w.detach().float()
    rows = w.shape[0] if w.dim() > 1 else 1
    err = (w_hat.float() - w).view(rows, -1).square_().sum(1).double().sum()
    power = w.view(rows, -1).square().sum(1).double().sum()
    mse = float(err / w.numel())
    sqnr = float("inf") if err == 0 else float(10 * torch.log10(power / err)) if power > 0 else float("-inf")
    return ErrorStats(mse, sqnr)
