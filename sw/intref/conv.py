"""Exact integer convolution, fast.

torch has no integer conv on CPU. A float64 conv is exact when every operand and every partial sum is an
integer of magnitude below 2^53 (float64 represents all such integers, so no product or addition ever
rounds, in any order the library chooses). :func:`integer_conv2d` checks that bound from the contract and
otherwise splits the weights into base-2^K digits, each digit's conv being exact, recombined in int64.
:func:`integer_conv2d_int64` is an independent int64 im2col reference used to test it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLOAT64_EXACT = 1 << 53


def _conv(x: torch.Tensor, w: torch.Tensor, stride, padding) -> torch.Tensor:
    return F.conv2d(x, w, stride=stride, padding=padding)


def integer_conv2d(x_int: torch.Tensor, w_int: torch.Tensor, stride=1, padding=0,
                   act_max: int | None = None, w_double: torch.Tensor | None = None,
                   as_double: bool = False) -> torch.Tensor:
    """``conv(x_int, w_int)`` exactly, as int64. ``x_int``: integer-valued float64; ``w_int``: int64.

    ``act_max`` bounds |x| (the contract's activation range); it defaults to the actual max of ``x_int``.
    ``w_double``: ``w_int`` as float64, when the caller keeps it (a network's forward passes). With
    ``as_double`` the result is float64, and equal to ``.double()`` of the int64 one: exact below 2^53, which
    is when no digits are needed, so the fast path then skips two conversions.
    """
    fan_in = w_int[0].numel()
    a = int(x_int.abs().max()) if act_max is None else act_max
    w_abs = int(w_int.abs().max()) if w_int.numel() else 0
    if fan_in * max(w_abs, 1) * max(a, 1) < FLOAT64_EXACT:
        out = _conv(x_int.double(), w_int.double() if w_double is None else w_double, stride, padding)
        return out if as_double else out.to(torch.int64)
    # Split W = sum_j D_j 2^(K j) with digits D_j in [0, 2^K) (the last digit carries the sign).
    k = max(1, (FLOAT64_EXACT // (fan_in * max(a, 1))).bit_length() - 1)
    acc = torch.zeros((), dtype=torch.int64)
    rest, shift = w_int.clone(), 0
    while True:
        digit = rest if (rest.abs() < (1 << k)).all() else torch.remainder(rest, 1 << k)
        acc = acc + (_conv(x_int.double(), digit.double(), stride, padding).to(torch.int64) << shift)
        if digit is rest:
            return acc.double() if as_double else acc
        rest = torch.div(rest - digit, 1 << k, rounding_mode="floor")
        shift += k


def integer_conv2d_int64(x_int: torch.Tensor, w_int: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """Independent reference: im2col and an int64 matrix product (slow; for tests)."""
    b, _, h, w = x_int.shape
    o, _, kh, kw = w_int.shape
    cols = F.unfold(x_int.double(), (kh, kw), padding=padding, stride=stride).to(torch.int64)
    out = torch.matmul(w_int.view(o, -1), cols)
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    return out.view(b, o, oh, ow)
