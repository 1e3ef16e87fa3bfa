"""The integer contract's width bounds and defaults, without importing torch, so the command line can check
flags in milliseconds. Each is defined here once; :mod:`sw.intref.contract` and the CLI import them."""

from __future__ import annotations

from ..quant.names import MAX_BITS, MIN_BITS

WEIGHT_BITS_RANGE = (MIN_BITS, MAX_BITS)  # k
ACT_BITS_RANGE = (2, 16)                  # A
SCALE_BITS_RANGE = (2, 24)                # F
LANES_RANGE = (1, 256)                    # L, dot-product elements per cycle of a PE
DEFAULT_ACT_BITS = 8
DEFAULT_SCALE_BITS = 16                   # also the storage accounting's width of a stored scale
# Scales the contract turns into integer mantissas: positive normal doubles whose shift E stays far inside a
# double's range (a subnormal scale would need E > 1000). Quantizer records and artifacts are checked against it.
SCALE_RANGE = (2.0 ** -64, 2.0 ** 64)
