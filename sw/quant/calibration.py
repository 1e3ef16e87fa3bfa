"""Per-conv input statistics on calibration images, for error-compensating rounding and bias correction.

For a conv with im2col input columns x (one per output position, length n = c kh kw) the layer output is
y = W x, so the output error of a weight error dW is dW x. Its mean square over the calibration data is
tr(dW H dW^T) with H = E[x x^T] (the second moment; GPTQ's Hessian 2 X X^T / N up to the factor 2), and its
mean is dW mu with mu = E[x]. Both are collected here in one pass of the float model over the images.

Positions are subsampled (a fixed number per image and layer, drawn from a seeded generator), so the pass
is cheap and the statistics are a deterministic function of the images and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import QuantizationError
from ..intref.calibrate import calibration_batches, calibration_images

POSITIONS_PER_IMAGE = 2048   # im2col columns sampled per image and layer
CALIB_IMG_SIZE = 640


@dataclass
class InputStats:
    """E[x x^T] [n, n] and E[x] [n] of one conv's im2col input columns (float64), over ``samples`` columns."""

    second_moment: torch.Tensor
    mean: torch.Tensor
    samples: int

    def output_mse(self, dw: torch.Tensor) -> float:
        """Mean over calibration positions and output channels of (dW x)^2, for dW [o, n] (or [o, c, kh, kw])."""
        d = dw.reshape(dw.shape[0], -1).double()
        return float(((d @ self.second_moment) * d).sum() / d.shape[0])


def _im2col(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """[B, n, P] columns of ``x`` as ``conv`` sees them (its padding, stride and dilation)."""
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)


@torch.no_grad()
def collect_input_stats(model: torch.nn.Module, conv_names: list[str], folder: str | Path, images: int = 32,
                        seed: int = 0, img_size: int = CALIB_IMG_SIZE, batch_size: int = 4,
                        positions: int = POSITIONS_PER_IMAGE, progress: bool = True) -> dict[str, InputStats]:
    """Run ``model`` over the first ``images`` JPEGs of ``folder`` and return each named conv's input statistics."""
    paths, sizes = calibration_images(folder, images)
    modules = dict(model.named_modules())
    for n in conv_names:
        if modules[n].groups != 1:
            raise QuantizationError(f"{n}: grouped convs (groups={modules[n].groups}) are not supported by "
                                    "calibrated rounding")
    sums: dict[str, torch.Tensor] = {}
    moments: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(conv_names, 0)
    gen = torch.Generator().manual_seed(seed)

    def hook(name):
        conv = modules[name]

        def record(_module, inputs):
            cols = _im2col(conv, inputs[0].detach().float())           # [B, n, P]
            b, n, p = cols.shape
            for i in range(b):
                c = cols[i]
                if p > positions:
                    c = c[:, torch.randperm(p, generator=gen)[:positions]]
                if name not in sums:
                    sums[name] = torch.zeros(n, dtype=torch.float64)
                    moments[name] = torch.zeros(n, n, dtype=torch.float64)
                sums[name] += c.sum(1, dtype=torch.float64)
                moments[name] += (c @ c.t()).double()  # float32 product of <= 2048 terms, summed in float64
                counts[name] += c.shape[1]
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in conv_names]
    try:
        for batch in calibration_batches(model, paths, sizes, img_size, batch_size, "calibration statistics",
                                         progress):
            model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: InputStats(moments[n] / counts[n], sums[n] / counts[n], counts[n]) for n in conv_names}
