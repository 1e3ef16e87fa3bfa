"""The elementwise work around the exact convs of the HW and INT networks, fused into one pass each, compiled.

Why: an exact conv layer (:class:`~sw.intref.conv.ExactConv`) costs two or three float32 convs, and around them
torch spent as much again on elementwise passes and dtype copies (torch's CPU kernels copy a float32 operand
to float64 before a mixed-dtype operation): quantizing the layer's float input to centred codes (a float64
copy, division, rounding, clamping, a float32 copy: five passes) and recombining the digit convs in float64
then applying the epilogue (five to seven more). Each function here reads its inputs once and writes its
output once, with the arithmetic of the torch path it replaces, operation for operation:

- :func:`quantize_centred`: ``clamp(round(x / s), lo, hi)`` with the division in float64 (correctly rounded,
  as torch's), round half to even (``nearbyint``, as ``torch.round``), NaN kept (as ``torch.clamp``), stored
  as float32 (the codes are integers below 2^24: exact);
- :func:`hw_output`: the recombined conv ``V = sum_j c_j 2^(k j)`` in float64 (each term and every partial sum
  an exact integer below 2^53: the plan's ``exact_double`` bound, so any order gives the same ``V``), then
  ``float32(V * scale)`` (one float64 product, rounded to float32) plus the float32 bias, as
  :meth:`~sw.intref.network.IntegerConv2d.forward`;
- :func:`codes_output`: ``V`` as above into :meth:`~sw.intref.epilogue.FloatEpilogue.apply` (its own proof:
  every step exact) and the table read;
- :func:`head_output`: a Detect conv's ``(V + offset_c) * scale_c`` in float64, as :meth:`~sw.intref.intnet.
  IntLayer.run`.

No fused multiply-add is formed (``-ffp-contract=off``), so each product and sum is IEEE's, as torch's are;
tests/test_intref_fused.py compares every function with its torch path, tensor for tensor with torch.equal,
on inputs at the bounds and on round-half ties. The library is built, loaded and run
on threads as every compiled kernel of yoloq is (:mod:`sw.ckernel`); where it cannot be built every function
returns None and the caller runs the torch path.
"""

from __future__ import annotations

import ctypes

import torch

from ..ckernel import CompiledKernel, run_split

SOURCE = r"""
#include <stdint.h>
#include <math.h>

/* out[i] = (float) clamp(nearbyint((double) x[i] / s), lo, hi); a NaN stays NaN (no comparison holds) */
void fused_quantize(const float *x, double s, double lo, double hi, float *out, int64_t i0, int64_t i1,
                    int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    for (int64_t i = i0; i < i1; i++) {
        double q = nearbyint((double)x[i] / s);
        q = q < lo ? lo : q;
        q = q > hi ? hi : q;
        out[i] = (float)q;
    }
}

/* V = c0 + c1 2^k + c2 2^2k in double (exact integers), of the digit convs, element i */
#define RECOMBINE(i) (digits == 1 ? (double)c0[i] : digits == 2 ? (double)c0[i] + (double)c1[i] * r1 \
                      : (double)c0[i] + (double)c1[i] * r1 + (double)c2[i] * r2)

/* rows [r0, r1) of [n * channels] planes of `plane` elements (NCHW contiguous) */
void fused_hw_output(const float *c0, const float *c1, const float *c2, int digits, double r1, double r2,
                     double scale, const float *bias, float *out, int64_t channels, int64_t plane,
                     int64_t row0, int64_t row1, int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    for (int64_t row = row0; row < row1; row++) {
        const int64_t base = row * plane;
        if (bias) {
            const float b = bias[row % channels];
            for (int64_t j = base; j < base + plane; j++) out[j] = (float)(RECOMBINE(j) * scale) + b;
        } else {
            for (int64_t j = base; j < base + plane; j++) out[j] = (float)(RECOMBINE(j) * scale);
        }
    }
}

void fused_codes_output(const float *c0, const float *c1, const float *c2, int digits, double r1, double r2,
                        const double *scale, const double *cst, double top, const float *table, float *out,
                        int64_t channels, int64_t plane, int64_t row0, int64_t row1, int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    for (int64_t row = row0; row < row1; row++) {
        const int64_t base = row * plane, c = row % channels;
        const double s = scale[c], k = cst[c];
        for (int64_t j = base; j < base + plane; j++) {
            double t = k + RECOMBINE(j) * s;
            t = t < 0 ? 0 : t;
            t = t > top ? top : t;
            out[j] = table[(int64_t)t];
        }
    }
}

void fused_head_output(const float *c0, const float *c1, const float *c2, int digits, double r1, double r2,
                       const double *offset, const double *scale, double *out, int64_t channels, int64_t plane,
                       int64_t row0, int64_t row1, int64_t u0, int64_t u1) {
    (void)u0; (void)u1;
    for (int64_t row = row0; row < row1; row++) {
        const int64_t base = row * plane, c = row % channels;
        const double o = offset[c], s = scale[c];
        for (int64_t j = base; j < base + plane; j++) out[j] = (RECOMBINE(j) + o) * s;
    }
}
"""

def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, dbl, cint = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
    lib.fused_quantize.restype = lib.fused_hw_output.restype = None
    lib.fused_codes_output.restype = lib.fused_head_output.restype = None
    lib.fused_quantize.argtypes = [ptr, dbl, dbl, dbl, ptr, i64, i64, i64, i64]
    digits = [ptr, ptr, ptr, cint, dbl, dbl]
    lib.fused_hw_output.argtypes = digits + [dbl, ptr, ptr, i64, i64, i64, i64, i64, i64]
    lib.fused_codes_output.argtypes = digits + [ptr, ptr, dbl, ptr, ptr, i64, i64, i64, i64, i64, i64]
    lib.fused_head_output.argtypes = digits + [ptr, ptr, ptr, i64, i64, i64, i64, i64, i64]


KERNEL = CompiledKernel("intref_fused", SOURCE, "the fused exact-conv kernels", "the torch path", _declare)
available, disabled = KERNEL.available, KERNEL.disabled


def quantize_centred(x: torch.Tensor, scale: float, lo: int, hi: int) -> torch.Tensor | None:
    """``clamp(round(x / scale), lo, hi)`` (division in float64) of float32 ``x``, as float32; None without
    the kernel or for another dtype."""
    library = KERNEL.library()
    if library is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.float32)
    run_split(library.fused_quantize, (x.data_ptr(), float(scale), float(lo), float(hi), out.data_ptr()),
                     x.numel(), 0, x.numel())
    return out


def _digit_args(convs: list[torch.Tensor], k: int) -> tuple[tuple, list[torch.Tensor], int, int]:
    """(C arguments of the digit convs, the tensors to keep alive, channels, plane)."""
    convs = [c.contiguous() for c in convs]
    n, o, h, w = convs[0].shape
    ptrs = [c.data_ptr() for c in convs] + [0] * (3 - len(convs))
    return (*ptrs, len(convs), float(1 << k), float(1 << (2 * k))), convs, o, h * w


def _usable(convs: list[torch.Tensor]):
    library = KERNEL.library()
    if library is None or not 1 <= len(convs) <= 3 or any(c.dtype != torch.float32 or c.device.type != "cpu"
                                                           for c in convs):
        return None
    return library


def hw_output(convs: list[torch.Tensor], k: int, scale: float, bias: torch.Tensor | None) -> torch.Tensor | None:
    """``float32(V * scale) + bias`` of the digit convs ``convs`` (float32 [n, o, h, w], ``V = sum_j c_j
    2^(k j)`` exact in float64); None without the kernel, or for a bias other than float32 (torch's sum would
    then be of its dtype)."""
    library = _usable(convs)
    if library is None or (bias is not None and (bias.dtype != torch.float32 or bias.device.type != "cpu")):
        return None
    args, convs, channels, plane = _digit_args(convs, k)
    b = None if bias is None else bias.detach().contiguous()
    out = torch.empty(convs[0].shape, dtype=torch.float32)
    rows = out.numel() // max(plane, 1)
    run_split(library.fused_hw_output, (*args, float(scale), 0 if b is None else b.data_ptr(),
                                               out.data_ptr(), channels, plane), rows, 0, out.numel())
    return out


def codes_output(convs: list[torch.Tensor], k: int, epilogue) -> torch.Tensor | None:
    """:meth:`~sw.intref.epilogue.FloatEpilogue.apply` of ``V`` (as :func:`hw_output`) for the
    :class:`~sw.intref.epilogue.FloatEpilogue` ``epilogue``: output codes, float32; None without the kernel."""
    library = _usable(convs)
    if library is None:
        return None
    args, convs, channels, plane = _digit_args(convs, k)
    scale, const = epilogue.scale.contiguous(), epilogue.const.contiguous()
    table = epilogue.table.contiguous()
    out = torch.empty(convs[0].shape, dtype=torch.float32)
    run_split(library.fused_codes_output, (*args, scale.data_ptr(), const.data_ptr(), float(epilogue.top),
                                                  table.data_ptr(), out.data_ptr(), channels, plane),
                     out.numel() // max(plane, 1), 0, out.numel())
    return out


def head_output(convs: list[torch.Tensor], k: int, offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """``(V + offset_c) * scale_c`` in float64 (``offset``, ``scale``: float64, one per channel); None without
    the kernel."""
    library = _usable(convs)
    if library is None:
        return None
    args, convs, channels, plane = _digit_args(convs, k)
    offset, scale = offset.double().contiguous(), scale.double().contiguous()
    out = torch.empty(convs[0].shape, dtype=torch.float64)
    run_split(library.fused_head_output, (*args, offset.data_ptr(), scale.data_ptr(), out.data_ptr(),
                                                 channels, plane), out.numel() // max(plane, 1), 0, out.numel())
    return out
