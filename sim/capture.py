"""Layer cases from a real network: activations captured on COCO images, quantized per the contract.

The hardware-exact network (:func:`sw.intref.validate.hardware_model`: every quantized conv an
:class:`~sw.intref.network.IntegerConv2d` with activation quantizers calibrated on coco128) runs on real
COCO images. A forward hook on each chosen conv takes its input, quantizes it with the conv's own
:class:`~sw.intref.contract.ActQuant`, and cuts out the receptive fields of N output positions, sampled per
layer with a seeded generator (deterministic for a seed, layer name and image). Padding is the code
``z_a``, as in the contract. For N >= 2 per image, the corner (0, 0), where padding reaches furthest, is one
of them. The expected accumulators are the conv's own (``IntegerConv2d.accumulate``, kept with
``keep_acc``) at those positions, and they are checked against ``columns @ W_int`` so that a capture
mistake can never pass for an RTL mismatch.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sw.eval.images import load_letterboxed
from sw.intref.network import IntegerConv2d
from sw.intref.stream import im2col
from sw.intref.validate import HardwareFormat, hardware_model
from sw.quant.model import QuantizedModel

from .stimulus import LayerCase, reference_accumulators


class CaptureError(AssertionError):
    """The captured activations do not reproduce the conv's own accumulators (a bug in the capture)."""


def sample_positions(name: str, image: int, oh: int, ow: int, n: int, seed: int) -> list[tuple[int, int]]:
    """``n`` distinct output positions (y, x) of an oh x ow map, deterministic in (seed, layer, image)."""
    total = oh * ow
    n = min(n, total)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), image])
    flat = rng.choice(total, size=n, replace=False)
    if n >= 2 and 0 not in flat:
        flat[-1] = 0
    return [(int(i) // ow, int(i) % ow) for i in sorted(flat.tolist())]


def receptive_fields(x_int: torch.Tensor, conv: IntegerConv2d, positions: list[tuple[int, int]]) -> np.ndarray:
    """The im2col rows [P, N] of ``positions`` (image 0 of ``x_int``), padding = the zero-point code."""
    _, _, kh, kw = conv.contract.shape
    s, p = conv.stride, conv.padding
    x = F.pad(x_int[:1], [p] * 4, value=float(conv.act.zero_point)) if p else x_int[:1]
    windows = torch.cat([x[:, :, y * s:y * s + kh, xx * s:xx * s + kw] for y, xx in positions])
    return im2col(windows, conv.contract, 1, 0, conv.act.zero_point).reshape(len(positions), -1)


def image_paths(coco_root: Path, count: int) -> list[Path]:
    """The first ``count`` COCO images (sorted by file name) of ``<coco_root>/images/val2017``."""
    from sw.errors import DataNotFoundError

    folder = Path(coco_root) / "images" / "val2017"
    paths = sorted(folder.glob("*.jpg"))[:count]
    if not paths:
        raise DataNotFoundError(f"no COCO images (*.jpg) in {folder}")
    return paths


class _Captured(Exception):
    """Stops a forward pass once the wanted input has been seen (the rest of the network is not needed)."""


@torch.no_grad()
def conv_input(model: torch.nn.Module, name: str, image: Path, img_size: int) -> torch.Tensor:
    """The float input of conv ``name`` when ``model`` runs on a letterboxed COCO ``image``."""
    conv = dict(model.named_modules())[name]
    seen = {}

    def grab(_module, inputs):
        seen["x"] = inputs[0].detach().clone()
        raise _Captured

    handle = conv.register_forward_pre_hook(grab)
    try:
        lb = load_letterboxed(image, 0, img_size, int(model.stride.max()))
        model(torch.from_numpy(lb.array)[None].float() / 255.0)
    except _Captured:
        pass
    finally:
        handle.remove()
    return seen["x"]


def layer_case(contract, conv: torch.nn.Conv2d, x: torch.Tensor, positions: int, seed: int = 0) -> LayerCase:
    """One layer's case from its float input ``x`` (e.g. :func:`conv_input`), without the whole network.

    The activation quantizer spans the observed range of ``x`` (``ActQuant.from_range``); the expected
    accumulators are :meth:`IntegerConv2d.accumulate`'s, as in :func:`network_cases`.
    """
    from sw.intref.contract import ActQuant

    act = ActQuant.from_range(contract.fmt.act_bits, float(x.min()), float(x.max()))
    integer = IntegerConv2d(contract, conv, act)
    acc = integer.accumulate(x)
    where = sample_positions(contract.name, 0, acc.shape[2], acc.shape[3], positions, seed)
    cols = receptive_fields(act.quantize(x), integer, where)
    want = np.stack([acc[0, :, y, xx].numpy() for y, xx in where])
    if not np.array_equal(reference_accumulators(contract, cols), want):
        raise CaptureError(f"{contract.name}: captured activations do not reproduce the conv's accumulators")
    return LayerCase(contract, cols, want, [(0, y, xx) for y, xx in where])


@torch.no_grad()
def network_cases(qm: QuantizedModel, names: list[str], positions: int, images: list[Path], calib_dir: Path,
                  fmt: HardwareFormat | None = None, img_size: int = 640, seed: int = 0,
                  progress: bool = True, hardware=None) -> list[LayerCase]:
    """A :class:`LayerCase` per layer in ``names``: ``positions`` output positions spread over ``images``
    (``fmt``: the hardware format, default :class:`~sw.intref.validate.HardwareFormat`'s).

    Only the work these layers need: the network is calibrated, and run on each image, only as far as them.
    ``hardware``: :func:`hardware_model`'s result for ``qm`` and ``fmt`` when the caller has it (calibrate once).
    """
    fmt = fmt or HardwareFormat()
    hw, _, _ = hardware or hardware_model(qm, fmt, calib_dir, progress, upto=names)
    modules = dict(hw.named_modules())
    stride = int(qm.model.stride.max())
    per_image = [positions // len(images) + (i < positions % len(images)) for i in range(len(images))]
    columns: dict[str, list] = {n: [] for n in names}
    expected: dict[str, list] = {n: [] for n in names}
    labels: dict[str, list] = {n: [] for n in names}
    state = {"image": 0, "seen": set()}

    def hook(name):
        def capture(conv: IntegerConv2d, inputs, _output):
            acc = conv.last_acc
            conv.last_acc = None
            i = state["image"]
            if per_image[i]:
                where = sample_positions(name, i, *acc.shape[2:], per_image[i], seed)
                cols = receptive_fields(conv.act.quantize(inputs[0]), conv, where)
                want = np.stack([acc[0, :, y, x].numpy() for y, x in where])
                if not np.array_equal(reference_accumulators(conv.contract, cols), want):
                    raise CaptureError(f"{name}: captured activations do not reproduce the conv's accumulators")
                columns[name].append(cols)
                expected[name].append(want)
                labels[name] += [(i, y, x) for y, x in where]
            state["seen"].add(name)
            if len(state["seen"]) == len(names):
                raise _Captured  # every chosen layer has its input: the rest of the network is not needed
        return capture

    handles = []
    for n in names:
        conv = modules[n]
        conv.keep_acc = True
        handles.append(conv.register_forward_hook(hook(n)))
    try:
        for i, path in enumerate(tqdm(images, desc="capture", unit="image", disable=not progress, leave=False)):
            state["image"], state["seen"] = i, set()
            image = load_letterboxed(path, i, img_size, stride)
            try:
                hw(torch.from_numpy(image.array)[None].float() / 255.0)
            except _Captured:
                pass
    finally:
        for h in handles:
            h.remove()
        for n in names:
            modules[n].keep_acc = False
    cases = []
    for n in names:
        conv = modules[n]
        if not columns[n]:
            raise CaptureError(f"{n} did not run in the forward pass; no activations to test it with")
        cases.append(LayerCase(conv.contract, np.concatenate(columns[n]), np.concatenate(expected[n]), labels[n]))
    return cases
