"""Layer-unit cases from the integer-only network: whole feature maps, code for code.

The integer network (:func:`sw.intref.intnet.integer_network`: one quantizer per tensor, calibrated on
coco128, an integer epilogue per conv) runs on real COCO images and traces each chosen conv
(:meth:`~sw.intref.intnet.IntegerNetwork.trace`): its input codes, accumulators, :class:`LayerEpilogue`
and output codes. A :class:`~sim.stimulus.LayerCase` then holds the im2col rows of every output position
(or ``positions`` of them, sampled as :func:`sim.capture.sample_positions` does), the accumulators and the
output codes the layer unit must produce, position-major then channel, the order the testbench issues
them. A Detect conv's output is not requantized (the box decoder dequantizes ``t = acc + K_c``): its unit
runs with an epilogue holding only its offsets ``K_c`` (:func:`hw.layer_build.detect_epilogue`) and is
compared on ``t``.

Two checks on capture, so that a capture mistake never passes for an RTL mismatch: the rows reproduce the
traced accumulators (``columns @ W_int``), and the traced epilogue reproduces the traced output codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hw.layer_build import detect_epilogue
from sw.eval.images import load_letterboxed
from sw.intref.stream import im2col
from sw.intref.validate import HardwareFormat
from sw.quant.model import QuantizedModel

from .capture import CaptureError, sample_positions
from .stimulus import LayerCase, reference_accumulators


def trace_case(trace, image: int, positions: int | None, seed: int) -> LayerCase:
    """The case of one traced conv on image ``image`` (batch of one): every output position, or ``positions``."""
    contract = trace.contract
    acc = trace.acc[0]
    o, oh, ow = acc.shape
    cols = im2col(trace.input[:1], contract, trace.stride, trace.padding, trace.input_quant.zero_point)[0]
    if positions is None:
        where = [(y, x) for y in range(oh) for x in range(ow)]
        cols_at = cols
    else:
        where = sample_positions(trace.name, image, oh, ow, positions, seed)
        cols_at = cols[[y * ow + x for y, x in where]]
    index = [y * ow + x for y, x in where]
    want_acc = acc.reshape(o, -1).T[index].numpy()
    if not np.array_equal(reference_accumulators(contract, cols_at), want_acc):
        raise CaptureError(f"{trace.name}: the traced input codes do not reproduce its accumulators")
    if trace.epilogue is not None:
        ep, compare = trace.epilogue, "code"
        outputs = trace.output[0].reshape(o, -1).T[index].numpy()
        if not np.array_equal(ep.apply(torch.from_numpy(want_acc), channel_dim=1).numpy(), outputs):
            raise CaptureError(f"{trace.name}: the traced epilogue does not reproduce its output codes")
    else:
        ep, compare = detect_epilogue(trace.name, contract, trace.head.offset), "sum"
        outputs = want_acc + ep.offset.numpy()[None, :]
    return LayerCase(contract, np.ascontiguousarray(cols_at), want_acc, [(image, y, x) for y, x in where],
                     epilogue=ep, outputs=np.ascontiguousarray(outputs), compare=compare)


@torch.no_grad()
def feature_map_cases(qm: QuantizedModel, names: list[str], positions: int | None, images: list[Path],
                      calib_dir: Path, fmt: HardwareFormat | None = None, img_size: int = 640, seed: int = 0,
                      progress: bool = True) -> list[LayerCase]:
    """A layer-unit :class:`LayerCase` per conv in ``names``: on each image, every output position
    (``positions=None``) or ``positions`` sampled ones; the network is calibrated and run only as far as them."""
    from sw.intref.intnet import integer_network

    fmt = fmt or HardwareFormat()
    net = integer_network(qm, calib_dir, fmt.act_bits, fmt.scale_bits, fmt.calib_images, progress=progress,
                          upto=names, img_size=img_size)  # calibrated at the size the images run at
    stride = int(qm.model.stride.max())
    per_layer: dict[str, list[LayerCase]] = {n: [] for n in names}
    for i, path in enumerate(tqdm(images, desc="trace", unit="image", disable=not progress, leave=False)):
        image = load_letterboxed(path, i, img_size, stride)
        traces = net.trace(torch.from_numpy(image.array)[None].float() / 255.0, layers=names)
        for n in names:
            if n not in traces:
                raise CaptureError(f"{n} did not run in the integer network; no feature map to test it with")
            per_layer[n].append(trace_case(traces[n], i, positions, seed))
    return [merge_cases(per_layer[n]) for n in names]


def merge_cases(cases: list[LayerCase]) -> LayerCase:
    """One case of a layer's cases on several images (same contract and epilogue)."""
    if len(cases) == 1:
        return cases[0]
    first = cases[0]
    return LayerCase(first.contract, np.concatenate([c.columns for c in cases]),
                     np.concatenate([c.expected for c in cases]), [p for c in cases for p in c.positions],
                     epilogue=first.epilogue, outputs=np.concatenate([c.outputs for c in cases]),
                     compare=first.compare)
