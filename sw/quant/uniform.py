"""Uniform quantizers of the paper, as small pure functions over per-group tensors.

Notation: k bits, group minimum beta, maximum alpha, m = max|w|. Codes are signed integers.

- affine: s = (alpha - beta) / (2^k - 1), z = -round(beta / s) - 2^(k-1),
  q = clamp(round(w / s) + z, -2^(k-1), 2^(k-1) - 1), w_hat = s (q - z).
  The range is first widened to contain 0 (beta <= 0 <= alpha), as PyTorch, Brevitas and TFLite do: then
  0.0 is exact and z is itself a k-bit code. For a group that straddles zero (every multi-weight group of a
  trained conv in practice) this is exactly the paper's equation.
- symmetric, restricted range: s = m / (2^(k-1) - 1), codes in +-(2^(k-1) - 1), z = 0.
- symmetric, full range: s = 2m / (2^k - 1), codes in [-2^(k-1), 2^(k-1) - 1], z = 0.

Degenerate groups (one weight, all-equal weights, all-zero weights) are represented exactly. Scales are
float64 and the range contains the group's extremes as code points: an all-zero group gets s = 1, z = 0;
a group whose weights share one magnitude m gets s = m / (2^(k-1) - 1) in full-range symmetric
quantization (its formula would put +m half a step off the grid).
Rounding is round-half-to-even (torch.round) everywhere, the same in the integer contract.
"""

from __future__ import annotations

import torch


def code_range(bits: int, restricted: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of signed k-bit codes; restricted drops -2^(k-1) to make the range symmetric."""
    half = 1 << (bits - 1)
    return (-(half - 1) if restricted else -half), half - 1


def _safe_scale(s: torch.Tensor) -> torch.Tensor:
    """A zero scale (all-zero group) becomes 1: any positive scale represents 0 exactly."""
    return torch.where(s > 0, s, torch.ones_like(s))


def affine_params(wmin: torch.Tensor, wmax: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float64) and integer zero-point (int64) per group for k-bit affine quantization."""
    beta = torch.clamp(wmin.double(), max=0.0)
    alpha = torch.clamp(wmax.double(), min=0.0)
    s = _safe_scale((alpha - beta) / ((1 << bits) - 1))
    z = -torch.round(beta / s) - (1 << (bits - 1))
    return s, z.to(torch.int64)


def symmetric_scale(absmax: torch.Tensor, bits: int, full_range: bool,
                    one_magnitude: torch.Tensor | None = None) -> torch.Tensor:
    """Scale per group for symmetric quantization over [-m, m].

    ``one_magnitude`` marks groups whose |w| are all equal; full range then uses the restricted scale,
    which puts +-m exactly on codes that the full range also has.
    """
    m = absmax.double()
    restricted = m / ((1 << (bits - 1)) - 1)
    if not full_range:
        return _safe_scale(restricted)
    s = m / (((1 << bits) - 1) / 2)
    if one_magnitude is not None:
        s = torch.where(one_magnitude, restricted, s)
    return _safe_scale(s)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, qmin: int, qmax: int) -> torch.Tensor:
    """Integer codes clamp(round(w / s) + z, qmin, qmax), in w's float dtype (exact small integers).

    ``scale``/``zero_point`` broadcast over ``w``. Computing in w's dtype (float32 for models) keeps the
    hot path fast; the codes are what they are, and every dequantization uses the float64 scale.
    """
    q = torch.round(w / scale.to(w.dtype))
    if not isinstance(zero_point, int) or zero_point:
        q = q.add_(zero_point.to(w.dtype) if isinstance(zero_point, torch.Tensor) else zero_point)
    return q.clamp_(qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int = 0) -> torch.Tensor:
    """w_hat = s (q - z), computed in float64."""
    return scale * (q.double() - zero_point)
