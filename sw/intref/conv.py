"""Exact integer convolution, fast.

torch has no integer conv on CPU; a float conv of integer-valued tensors is exact when no product and no
partial sum ever rounds. The bound that proves it, for integer weights ``W`` and inputs ``|x| <= a``: output
channel ``c``'s value is ``sum_i W_ci x_i``, and every partial sum the library may form (in any order, with
any blocking, with or without fused multiply-adds) is a sum over a subset of those products, so its
magnitude is at most ``sum_i |W_ci| |x_i| <= ||W_c||_1 * a`` (the filter's L1 norm, much tighter than
``fan_in * max|W| * a`` for quantized weights). A float format holds every integer up to ``2^p`` (p = 24:
float32, 53: float64), so when ``max_c ||W_c||_1 * a < 2^p`` every intermediate is an exact integer.

Where one conv does not fit, :class:`ExactConv` splits the weights into base-``2^k`` digits
``W = sum_j D_j 2^(k j)`` (balanced: every digit but the last in ``[-2^(k-1), 2^(k-1))``) such that each
digit's conv fits, and recombines ``sum_j conv(x, D_j) 2^(k j)``: in float64 when the same L1 argument bounds
the recombined sum below 2^53, otherwise in int64. In float64 any order of that sum is exact: each term
``c_j 2^(k j)`` is an integer times a power of two, and every partial sum is bounded by the same
``sum_j ||D_j||_1 2^(k j) a``; so :mod:`sw.intref.fused` may recombine :meth:`ExactConv.float32_digits` in
one pass with the epilogue. float32 convs (oneDNN, 4-20x faster than torch's float64
conv on CPU) are used when at most :data:`MAX_FLOAT32_DIGITS` digits fit the float32 bound, the input is on
the CPU and float32 convs there compute in IEEE single precision (:func:`float32_conv_is_ieee`); otherwise
float64 digits. PyTorch runs CPU float32 convs as oneDNN's direct convolution or as im2col and a matrix
product: sums of the products, both, never Winograd or FFT transforms (which would round), and the edge
tests (tests/test_intref_contract.py) would catch one that did. :func:`integer_conv2d_int64` is an
independent int64 im2col reference used to test it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
#: float32 digits cost one conv each; beyond this many, one float64 conv is cheaper.
MAX_FLOAT32_DIGITS = 3


def float32_conv_is_ieee() -> bool:
    """True when CPU float32 convs compute in IEEE single precision: no TF32 or bfloat16 down-conversion
    (``torch.backends.mkldnn.conv.fp32_precision`` and the settings it inherits, and the legacy matmul
    precision) has been asked for, and oneDNN is on. With oneDNN off, torch sends batches of 16 or more to
    NNPACK, whose Winograd and FFT convolutions round; so that, too, sends :class:`ExactConv` to float64."""
    b = torch.backends
    if not (b.mkldnn.is_available() and b.mkldnn.enabled) and b.nnpack.is_available():
        return False
    settings = [getattr(getattr(b.mkldnn, "conv", None), "fp32_precision", "none"),
                getattr(b.mkldnn, "fp32_precision", "none"), getattr(b, "fp32_precision", "none")]
    return all(s in ("none", "ieee") for s in settings) and torch.get_float32_matmul_precision() == "highest"


def _l1(w: torch.Tensor) -> int:
    """The largest filter L1 norm, ``max_c sum_i |W_ci|`` (a Python int: no overflow)."""
    return int(w.abs().sum(tuple(range(1, w.dim()))).max()) if w.numel() else 0


def _digits(w_int: torch.Tensor, k: int, count: int) -> list[torch.Tensor]:
    """``count`` balanced base-``2^k`` digits of ``w_int`` (int64), least significant first; the last digit
    holds the rest, so ``sum_j D_j 2^(k j) == w_int`` exactly."""
    digits, rest = [], w_int
    for _ in range(count - 1):
        high = torch.div(rest + (1 << (k - 1)), 1 << k, rounding_mode="floor")
        digits.append(rest - (high << k))
        rest = high
    return digits + [rest]


class ExactConv:
    """``conv2d(x, W)`` exactly, for one layer's integer weights ``W`` (int64 [o, c, kh, kw]) and
    integer-valued inputs with ``|x| <= act_max``, planned once (see the module docstring for the bounds)."""

    def __init__(self, w_int: torch.Tensor, act_max: int, allow_float32: bool = True):
        self.w_int, self.act_max = w_int, max(int(act_max), 1)
        self._float64: _Plan | None = None
        self.plan = (self._plan(torch.float32, FLOAT32_EXACT, MAX_FLOAT32_DIGITS) if allow_float32 else None) \
            or self._float64_plan()

    def _float64_plan(self) -> "_Plan":
        if self._float64 is None:
            self._float64 = self._plan(torch.float64, FLOAT64_EXACT, None)
        return self._float64

    def _plan(self, dtype, limit: int, max_digits: int | None) -> "_Plan | None":
        """The fewest digits whose convs are each exact in ``dtype``; None when more than ``max_digits``
        would be needed."""
        fan_in = self.w_int[0].numel() if self.w_int.numel() else 1
        if _l1(self.w_int) * self.act_max < limit:
            return _Plan.of(dtype, 0, [self.w_int], self.act_max)
        # lower digits have |D| <= 2^(k-1), so ||D||_1 a <= fan_in 2^(k-1) a < limit for the k taken here
        k = ((limit - 1) // (fan_in * self.act_max)).bit_length()
        if k < 1:
            return None
        count = 2
        while max_digits is None or count <= max_digits:
            digits = _digits(self.w_int, k, count)
            if all(_l1(d) * self.act_max < limit for d in digits):
                return _Plan.of(dtype, k, digits, self.act_max)
            count += 1
        return None

    def _plan_for(self, x: torch.Tensor) -> "_Plan":
        if self.plan.dtype == torch.float32 and not (x.device.type == "cpu" and float32_conv_is_ieee()):
            return self._float64_plan()
        return self.plan

    @property
    def exact_double(self) -> bool:
        return self.plan.exact_double

    def float32_digits(self, x: torch.Tensor, stride: int = 1,
                       padding: int = 0) -> tuple[list[torch.Tensor], int] | None:
        """(the float32 digit convs ``c_j``, ``k``) when the plan for ``x`` is float32 with :attr:`exact_double`:
        every ``c_j`` exact and ``sum_j c_j 2^(k j)`` exact in float64 in any order (:mod:`sw.intref.fused`
        recombines them); else None."""
        plan = self._plan_for(x)
        if plan.dtype != torch.float32 or not plan.exact_double:
            return None
        return plan.convs(x, stride, padding), plan.k

    def values(self, x: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
        """The conv, exact, as an integer-valued float tensor: float32 when one float32 conv is the whole
        plan (no conversion), else float64. Only for plans with :attr:`exact_double`."""
        plan = self._plan_for(x)
        if not plan.exact_double:
            raise ValueError("the conv's recombined sum may exceed 2^53; use int64()")
        return recombine(plan.convs(x, stride, padding), plan.k)

    def double(self, x: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
        """The conv as float64: exact (every output an integer below 2^53) when the plan's recombined bound
        allows (:attr:`exact_double`), otherwise the exact int64 result rounded to float64."""
        if not self._plan_for(x).exact_double:
            return self.int64(x, stride, padding).double()
        return self.values(x, stride, padding).double()

    def int64(self, x: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
        """The conv as int64, exact."""
        plan = self._plan_for(x)
        if plan.exact_double:
            return self.values(x, stride, padding).to(torch.int64)
        convs = plan.convs(x, stride, padding)
        out = convs[0].to(torch.int64)
        for j, c in enumerate(convs[1:], 1):
            out += c.to(torch.int64) << (plan.k * j)
        return out


def recombine(convs: list[torch.Tensor], k: int) -> torch.Tensor:
    """``sum_j convs[j] 2^(k j)`` of a plan's digit convs: the one conv itself, else float64 (exact when the
    plan has ``exact_double``)."""
    if len(convs) == 1:
        return convs[0]
    out = convs[0].double()
    for j, c in enumerate(convs[1:], 1):
        out.add_(c.double(), alpha=float(1 << (k * j)))  # exact: 2^(kj) times an exact integer
    return out


@dataclass(frozen=True)
class _Plan:
    """Digit weights in ``dtype`` (``W = sum_j digits[j] 2^(k j)``), each digit's conv exact in ``dtype``;
    ``exact_double``: the recombined sum's bound ``sum_j ||D_j||_1 2^(k j) a`` is below 2^53."""

    dtype: torch.dtype
    k: int
    digits: list
    exact_double: bool

    @classmethod
    def of(cls, dtype, k: int, digits: list[torch.Tensor], act_max: int) -> "_Plan":
        bound = sum(_l1(d) << (k * j) for j, d in enumerate(digits)) * act_max
        return cls(dtype, k, [d.to(dtype) for d in digits], bound < FLOAT64_EXACT)

    def convs(self, x: torch.Tensor, stride: int, padding: int) -> list[torch.Tensor]:
        x = x.to(self.dtype)
        return [F.conv2d(x, d.to(x.device), stride=stride, padding=padding) for d in self.digits]


def integer_conv2d(x_int: torch.Tensor, w_int: torch.Tensor, stride=1, padding=0,
                   act_max: int | None = None) -> torch.Tensor:
    """``conv(x_int, w_int)`` exactly, as int64. ``x_int``: integer-valued float; ``w_int``: int64.

    ``act_max`` bounds |x| (the contract's activation range); it defaults to the actual max of ``x_int``.
    A layer run many times keeps its :class:`ExactConv` instead (planned once).
    """
    a = int(x_int.abs().max()) if act_max is None else act_max
    return ExactConv(w_int, a).int64(x_int, stride, padding)


def integer_conv2d_int64(x_int: torch.Tensor, w_int: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """Independent reference: im2col and an int64 matrix product (slow; for tests)."""
    b, _, h, w = x_int.shape
    o, _, kh, kw = w_int.shape
    cols = F.unfold(x_int.double(), (kh, kw), padding=padding, stride=stride).to(torch.int64)
    out = torch.matmul(w_int.view(o, -1), cols)
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    return out.view(b, o, oh, ow)
