"""Per-tensor activation scales for the integer contract, calibrated on images (coco128 by default).

For every quantized conv the input activations of the fake-quantized model are sampled over the calibration
images. The codes span [min, c]: the observed minimum (YOLO's conv inputs follow SiLU, so it is a small
negative number or 0) and a clipping value c chosen to minimise the mean squared error of A-bit
quantization of the samples, over a grid of fractions of the observed maximum. MSE clipping trades a few
saturated outliers for finer steps everywhere else, which plain max calibration cannot.

Each layer samples with its own generator (seeded by the seed and the layer's name), so a layer's quantizer
does not depend on which other layers are calibrated with it: ``stop_after`` (calibrate only as far as some
layers, for co-simulating or building a few) gives those layers exactly the quantizers a whole-network
calibration gives them.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import DataNotFoundError
from .contract import ActQuant
from ..eval.images import image_size, prefetch_batches, shape_batches

CLIP_FRACTIONS = torch.linspace(0.05, 1.0, 64, dtype=torch.float64)
SAMPLES_PER_BATCH = 1 << 14
SAMPLES_PER_LAYER = 1 << 16


def calibration_images(folder: str | Path, limit: int) -> tuple[dict[int, Path], dict[int, tuple[int, int]]]:
    """The first ``limit`` JPEGs of ``folder`` (sorted), with their (h, w)."""
    folder = Path(folder)
    files = sorted(folder.glob("*.jpg"))[:limit]
    if not files:
        raise DataNotFoundError(f"no calibration images (*.jpg) in {folder}")
    paths, sizes = {}, {}
    for i, f in enumerate(files):
        paths[i], sizes[i] = f, image_size(f)
    return paths, sizes


def mse_clip(samples: torch.Tensor, lo: float, hi: float, bits: int) -> ActQuant:
    """The quantizer over [lo, f * hi] whose f (a clip fraction) minimises the samples' squared error."""
    if hi <= 0:
        return ActQuant.from_range(bits, lo, hi)
    candidates = [ActQuant.from_range(bits, lo, float(f) * hi) for f in CLIP_FRACTIONS]
    x = samples.float().view(1, -1)
    scales = torch.tensor([c.scale for c in candidates], dtype=torch.float32).view(-1, 1)
    zps = torch.tensor([c.zero_point for c in candidates], dtype=torch.float32).view(-1, 1)
    lo_code, hi_code = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = torch.div(x, scales).round_().add_(zps).clamp_(lo_code, hi_code).sub_(zps).mul_(scales)
    errors = q.sub_(x).square_().mean(1)
    return candidates[int(errors.argmin())]


def calibration_batches(model: torch.nn.Module, paths: dict, sizes: dict, img_size: int, batch_size: int,
                        desc: str, progress: bool):
    """The calibration images (from :func:`calibration_images`) as float batches in [0, 1], letterboxed for
    ``model``'s stride, decoded ahead of the model, with a progress bar: the one pass every calibration uses."""
    stride = int(getattr(model, "stride", torch.tensor([32])).max())
    batches = shape_batches(list(sizes.items()), img_size, stride, batch_size)
    for batch, _ in tqdm(prefetch_batches(batches, paths, img_size, stride), total=len(batches),
                         desc=desc, unit="batch", disable=not progress, leave=False):
        yield batch.float() / 255.0


class _Reached(Exception):
    """Ends a calibration forward pass once every ``stop_after`` layer has seen its input."""


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * (1 << 32) + zlib.crc32(name.encode()))


@torch.no_grad()
def calibrate(model: torch.nn.Module, conv_names: list[str], folder: str | Path, act_bits: int = 8,
              images: int = 32, img_size: int = 640, batch_size: int = 8, seed: int = 0,
              progress: bool = True, stop_after: list[str] | None = None) -> dict[str, ActQuant]:
    """Activation quantizer per conv input, from ``images`` calibration images run through ``model``.

    With ``stop_after``, each forward pass ends as soon as those layers have seen their input: only the convs
    that ran by then (every layer the ``stop_after`` layers depend on) are calibrated and returned.
    """
    paths, sizes = calibration_images(folder, images)
    modules = dict(model.named_modules())
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in conv_names}
    lows: dict[str, float] = {n: 0.0 for n in conv_names}
    highs: dict[str, float] = {n: 0.0 for n in conv_names}
    gens = {n: _generator(seed, n) for n in conv_names}
    waiting = set(stop_after or ())
    if waiting - set(conv_names):
        raise KeyError(f"stop_after names layers that are not calibrated: {sorted(waiting - set(conv_names))}")
    seen: set[str] = set()

    def hook(name):
        def record(_module, inputs):
            x = inputs[0].detach().flatten()
            lows[name] = min(lows[name], float(x.min()))
            highs[name] = max(highs[name], float(x.max()))
            idx = torch.randint(0, x.numel(), (min(SAMPLES_PER_BATCH, x.numel()),), generator=gens[name])
            samples[name].append(x[idx].clone())
            seen.add(name)
            if waiting and waiting <= seen:
                raise _Reached
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in conv_names]
    try:
        for batch in calibration_batches(model, paths, sizes, img_size, batch_size, "calibrate", progress):
            seen.clear()
            try:
                model(batch)
            except _Reached:
                pass
    finally:
        for h in handles:
            h.remove()
    quantizers = {}
    for n in conv_names:
        if not samples[n]:  # after the stop_after layers: never reached
            continue
        pool = torch.cat(samples[n])
        pool = pool[torch.randperm(pool.numel(), generator=gens[n])[:SAMPLES_PER_LAYER]]
        quantizers[n] = mse_clip(pool, lows[n], highs[n], act_bits)
    return quantizers
