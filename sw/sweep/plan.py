"""What a sweep runs: configurations (method x granularity x bits), the paper's presets, ``--bits`` ranges.

A :class:`Config` is one quantized model to evaluate; its :attr:`~Config.key` (``pwlq-4b-mix3``) names its
result file, so a key must never change meaning. The unquantized model is the configuration ``baseline``;
every plan starts with it because the Fig. 4 loss is measured against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import QuantizationError, SweepError
from ..quant.names import MAX_BITS, MIN_BITS

if TYPE_CHECKING:  # the CLI reads this module without loading torch
    from ..quant.model import QuantSpec

BASELINE_METHOD = "baseline"
# The paper's Table I order; "Uniform" in its tables is the affine quantizer.
TABLE1_GRANULARITIES = ("filter", "fshape", "cshape", "channel")
TABLE2_GRANULARITIES = ("mix3", "mix4")
PAPER_METHODS = ("affine", "pwlq")
PAPER_BITS = 4
REFERENCE_8BIT = ("affine", 8, "filter")  # an almost-lossless row to read the 4-bit losses against
PRESETS = ("table1", "table2", "fig4", "beyond", "all")
# Beyond the paper, on 4-bit mix3 of both methods (same grid, so about the same storage): (rounding, bias corr.)
BEYOND_OPTIONS = (("nearest", False), ("nearest", True), ("gptq", False), ("gptq", True))
DEFAULT_BITS = "2-8"
EXECUTORS = ("local", "ray")  # where the configurations run (sw.sweep.runner)


@dataclass(frozen=True)
class Config:
    """One sweep configuration. ``bits`` and ``granularity`` are None for the baseline. ``rounding`` and
    ``bias_correction`` go beyond the paper (its configurations keep the defaults)."""

    method: str
    bits: int | None = None
    granularity: str | None = None
    rounding: str = "nearest"
    bias_correction: bool = False

    @property
    def is_baseline(self) -> bool:
        return self.method == BASELINE_METHOD

    @property
    def key(self) -> str:
        """Stable file-name-safe identifier, e.g. ``pwlq-4b-mix3`` or ``baseline``."""
        if self.is_baseline:
            return BASELINE_METHOD
        extra = ("" if self.rounding == "nearest" else f"-{self.rounding}") + ("-bc" if self.bias_correction else "")
        return f"{self.method}-{self.bits}b-{self.granularity}{extra}"

    @property
    def is_paper(self) -> bool:
        """Nearest rounding without bias correction: a configuration of the paper's study."""
        return self.rounding == "nearest" and not self.bias_correction

    def spec(self) -> "QuantSpec":
        """The quantization this configuration asks for (the paper's default policy otherwise)."""
        from ..quant.model import QuantSpec  # (here: the CLI reads PRESETS without loading torch)

        if self.is_baseline:
            raise SweepError("the baseline configuration is not quantized; it has no QuantSpec")
        return QuantSpec(method=self.method, bits=self.bits, granularity=self.granularity, rounding=self.rounding,
                         bias_correction=self.bias_correction)

    def validate(self) -> None:
        if self.is_baseline:
            if self.bits is not None or self.granularity is not None:
                raise SweepError(f"the baseline takes no bits or granularity, got {self}")
            return
        try:
            self.spec().validate()
        except QuantizationError as e:
            raise SweepError(f"configuration {self.key}: {e}") from e

    def as_dict(self) -> dict:
        return {"key": self.key, "method": self.method, "bits": self.bits, "granularity": self.granularity,
                "rounding": self.rounding, "bias_correction": self.bias_correction}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(d["method"], d.get("bits"), d.get("granularity"), d.get("rounding", "nearest"),
                   bool(d.get("bias_correction", False)))


BASELINE = Config(BASELINE_METHOD)


def parse_bits(text: str) -> tuple[int, ...]:
    """``"2-8"``, ``"4,6,8"``, ``"5"`` or mixes like ``"2-4,8"`` -> sorted distinct bit widths in 2..8."""
    def bad(why: str) -> SweepError:
        return SweepError(f"--bits {text!r}: {why}; give widths from {MIN_BITS} to {MAX_BITS} "
                          f"as a range '2-8', a list '4,6,8' or both '2-4,8'")

    widths: set[int] = set()
    parts = [p.strip() for p in str(text).split(",")]
    if not all(parts):
        raise bad("empty item")
    for part in parts:
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise bad(f"{part!r} is not an integer or a range of integers") from None
        if lo > hi:
            raise bad(f"range {part!r} runs backwards")
        for k in (lo, hi):
            if not MIN_BITS <= k <= MAX_BITS:
                raise bad(f"{k} is out of range")
        widths.update(range(lo, hi + 1))
    return tuple(sorted(widths))


def table1() -> list[Config]:
    """Table I: both methods at every single granularity, 4 bits, plus the 8-bit affine filter reference."""
    rows = [Config(m, PAPER_BITS, g) for m in PAPER_METHODS for g in TABLE1_GRANULARITIES]
    return rows + [Config(*REFERENCE_8BIT)]


def table2() -> list[Config]:
    """Table II: both methods with the mixes of 3 and 4 granularities, 4 bits."""
    return [Config(m, PAPER_BITS, g) for m in PAPER_METHODS for g in TABLE2_GRANULARITIES]


def fig4(bits: tuple[int, ...]) -> list[Config]:
    """Fig. 4: PWLQ mix3 at every k, and affine mix3 at every k (the equal-storage partners of PWLQ k-1)."""
    return [Config(m, k, "mix3") for m in ("pwlq", "affine") for k in bits]


def beyond() -> list[Config]:
    """Beyond the paper: 4-bit mix3 of PWLQ and affine with nearest or GPTQ rounding, with and without bias
    correction (the grid, hence the storage, stays that of the paper's configuration)."""
    return [Config(m, PAPER_BITS, "mix3", r, bc) for m in PAPER_METHODS[::-1] for r, bc in BEYOND_OPTIONS]


def plan(preset: str, bits: tuple[int, ...] | str = DEFAULT_BITS) -> list[Config]:
    """The baseline, then the preset's configurations in a stable order without duplicates."""
    if preset not in PRESETS:
        raise SweepError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(bits, str):
        bits = parse_bits(bits)
    parts = {"table1": table1(), "table2": table2(), "fig4": fig4(bits), "beyond": beyond()}
    chosen = ["table1", "table2", "fig4"] if preset == "all" else [preset]  # all: the paper's study
    configs = [BASELINE]
    for name in chosen:
        configs += [c for c in parts[name] if c not in configs]
    for c in configs:
        c.validate()
    return configs
