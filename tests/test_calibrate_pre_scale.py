"""The pre-activation step of a conv (:func:`sw.intref.calibrate.pre_activation_scale`) against its definition:
per clip fraction, the mean squared error of the table's codes over the samples, one sample at a time; the
first fraction of least error. Equal steps, on samples made to sit on code boundaries too."""

import pytest
import torch

from sw.intref.calibrate import CLIP_FRACTIONS, _code_ends, pre_activation_scale
from sw.intref.contract import ActQuant
from sw.intref.epilogue import ACTIVATIONS, EpilogueFormat, activation_table


def definition(samples: torch.Tensor, activation: str, out: ActQuant, pre_bits: int) -> float:
    """The step as defined: every sample's table code against its ideal code, per fraction (the plain loop)."""
    top = float(samples.abs().max()) if samples.numel() else 0.0
    if top == 0.0:
        return 1.0
    fmt = EpilogueFormat(2, 1, out.bits, pre_bits)
    lo, hi = fmt.pre_range
    x = samples.double()
    ideal = out.quantize(ACTIVATIONS[activation](x))
    best, best_err = 1.0, float("inf")
    for f in CLIP_FRACTIONS.tolist():
        step = f * top / hi
        codes = torch.round(x / step).clamp_(lo, hi).to(torch.int64)
        err = float((activation_table(activation, step, out, fmt)[codes - lo].double() - ideal).square().mean())
        if err < best_err:
            best, best_err = step, err
    return best


def boundary_samples(gen: torch.Generator, top: float, hi: int, n: int) -> torch.Tensor:
    """Samples on the half-code boundaries ``(k + 1/2) step`` of the fractions' steps (where round() ties, and
    where a bisection on the values could land a sample off) and their float64 neighbours, within ``top``."""
    fractions = CLIP_FRACTIONS[torch.randint(0, len(CLIP_FRACTIONS), (n,), generator=gen)].tolist()
    ks = torch.randint(-hi - 1, hi, (n,), generator=gen).tolist()
    values = torch.tensor([(k + 0.5) * (f * top / hi) for k, f in zip(ks, fractions)], dtype=torch.float64)
    values = values[values.abs() < top]
    near = values[:n // 4]
    return torch.cat([values, torch.nextafter(near, torch.full_like(near, -1e300)),
                      torch.nextafter(near, torch.full_like(near, 1e300))])


def check(samples: torch.Tensor, activation: str, out: ActQuant, pre_bits: int = 12) -> float:
    step = pre_activation_scale(samples, activation, out, pre_bits)
    assert step == definition(samples, activation, out, pre_bits)
    return step


@pytest.mark.parametrize("activation", ["silu", "leaky_relu_0.1", "identity"])
@pytest.mark.parametrize("seed", range(3))
def test_equal_to_the_definition(activation, seed):
    gen = torch.Generator().manual_seed(seed)
    out = ActQuant.from_range(8, -0.3 if activation == "silu" else -2.0, 3.0 + seed)
    heavy = torch.randn(6000, generator=gen, dtype=torch.float64) * (1.0 + 4 * seed)
    heavy[:60] *= 20  # outliers: the clip fraction matters
    top = float(heavy.abs().max())
    samples = torch.cat([heavy, boundary_samples(gen, top, 2047, 3000), heavy[:500],  # repeated values
                         torch.zeros(50, dtype=torch.float64)])
    for x in (samples, samples.float()):  # float64 boundaries, and float32 samples as calibration takes them
        check(x[torch.randperm(x.numel(), generator=gen)], activation, out)


def test_code_counts_at_the_boundaries():
    """The per-code sample counts the step's error is made of, equal to the definition's codes counted one by
    one, for samples on and beside every fraction's half-code boundaries (ties of round-half-to-even)."""
    gen = torch.Generator().manual_seed(3)
    lo, hi = -2048, 2047
    x = torch.cat([torch.randn(2000, generator=gen, dtype=torch.float64) * 5,
                   boundary_samples(gen, 20.0, hi, 4000)]).sort().values
    steps = [f * 20.0 / hi for f in CLIP_FRACTIONS.tolist()]
    want = torch.stack([torch.bincount(torch.round(x / step).clamp_(lo, hi).to(torch.int64) - lo,
                                       minlength=hi - lo + 1).cumsum(0) for step in steps])
    assert torch.equal(_code_ends(x, torch.tensor(steps, dtype=torch.float64), lo, hi), want)


def test_small_pre_code_widths():
    """Few pre-activation codes (P = 4, 6): most samples saturate, and every boundary is crowded."""
    gen = torch.Generator().manual_seed(7)
    out = ActQuant.from_range(8, -0.3, 6.0)
    x = torch.randn(5000, generator=gen) * 3
    for bits in (4, 6):
        check(x, "silu", out, bits)


def test_a_tie_between_fractions_keeps_the_first():
    """A consumer quantizer coarser than every step: every fraction's error is the same, and the first
    fraction wins in both."""
    out = ActQuant.from_range(8, -1000.0, 1000.0)
    samples = torch.tensor([0.01, -0.02, 0.03, 0.0])
    assert check(samples, "identity", out) == CLIP_FRACTIONS[0].item() * float(samples.max()) / 2047


@pytest.mark.parametrize("samples", [torch.zeros(5), torch.zeros(0), torch.tensor([-1.5]), torch.tensor([2.0, 2.0])])
def test_degenerate_samples(samples):
    check(samples, "silu", ActQuant.from_range(8, -0.3, 4.0))
