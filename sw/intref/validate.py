"""Hardware mAP against software mAP: one model, four evaluations on the same images.

FP (the checkpoint as loaded), SW (fake-quantized weights, float activations), HW (the MAC-exact model:
every quantized conv's accumulators per the integer contract, the epilogue in float) and INT (the
integer-only network, :mod:`sw.intref.intnet`: integer codes between all layers, only the Detect convs'
outputs dequantized). HW and INT share one per-tensor activation calibration on coco128.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..eval.coco import CocoSubset, evaluate_many
from ..eval.images import load_letterboxed
from ..quant.model import QuantizedModel
from .calibrate import calibrate_tensors
from .compare import activation_sqnr, integer_sqnr
from .contract import DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS
from .intnet import IntegerNetwork
from .network import build_hardware_model


@dataclass
class HardwareFormat:
    act_bits: int = DEFAULT_ACT_BITS
    scale_bits: int = DEFAULT_SCALE_BITS
    calib_images: int = 32


def hardware_model(qm: QuantizedModel, fmt: HardwareFormat, calib_dir: Path, progress: bool = True,
                   upto: list[str] | None = None):
    """(hardware-exact model, contracts, per-tensor calibration
    (:class:`~sw.intref.calibrate.TensorCalibration`)). With ``upto``, only as far as those layers: the convs
    that run before them are calibrated and made integer (as in the whole network), the rest stay
    fake-quantized floats and must not be relied on."""
    calibration = calibrate_tensors(qm.model, calib_dir, fmt.act_bits, fmt.calib_images, progress=progress,
                                    stop_after=upto)
    act_quant = calibration.conv_inputs()
    if upto is None:  # every quantized conv; FP16 layers have no quantizer use
        act_quant = {n: q for n, q in act_quant.items() if qm.layers[n].qt is not None}
    model, contracts = build_hardware_model(qm, act_quant, fmt.act_bits, fmt.scale_bits, partial=upto is not None)
    return model, contracts, calibration


def validate(fp_model, qm: QuantizedModel, coco: CocoSubset, fmt: HardwareFormat, calib_dir: Path,
             eval_kwargs: dict, progress: bool = True, with_fp: bool = True, hardware=None) -> dict:
    """mAPs of FP, SW, HW and INT on ``coco`` plus per-layer SQNR; the keys ``yoloq hw validate`` writes.

    The models are evaluated in one pass over the images (the same results as four). ``hardware``: the
    result of :func:`hardware_model` for ``qm`` and ``fmt`` when the caller has it already (calibrate once).
    """
    t0 = time.perf_counter()
    hw, contracts, calibration = hardware or hardware_model(qm, fmt, calib_dir, progress)
    intnet = IntegerNetwork(qm, calibration, fmt.act_bits, fmt.scale_bits)
    stride = int(qm.model.stride.max())
    models = {"sw": qm.model, "hw": hw, "int": intnet}
    if with_fp:
        models = {"fp": fp_model, **models}
    runs = evaluate_many(models, coco, stride=stride, progress=progress, desc="eval " + "+".join(models),
                         **eval_kwargs)
    first = coco.image_ids[0]
    image = load_letterboxed(coco.paths[first], first, eval_kwargs.get("img_size", 640), stride)
    x = torch.from_numpy(image.array)[None].float() / 255.0
    sqnr = activation_sqnr(qm.model, hw, x)
    int_sqnr = integer_sqnr(intnet, x)
    result = {"map50_sw": runs["sw"]["map50"], "map50_hw": runs["hw"]["map50"],
              "map50_95_sw": runs["sw"]["map50_95"], "map50_95_hw": runs["hw"]["map50_95"],
              "delta_map50": runs["hw"]["map50"] - runs["sw"]["map50"],
              "delta_map50_95": runs["hw"]["map50_95"] - runs["sw"]["map50_95"],
              "map50_int": runs["int"]["map50"], "map50_95_int": runs["int"]["map50_95"],
              "delta_map50_int": runs["int"]["map50"] - runs["sw"]["map50"],
              "delta_map50_95_int": runs["int"]["map50_95"] - runs["sw"]["map50_95"]}
    if "fp" in runs:
        result.update(map50_fp=runs["fp"]["map50"], map50_95_fp=runs["fp"]["map50_95"])
    result.update(act_bits=fmt.act_bits, scale_bits=fmt.scale_bits, calib_images=fmt.calib_images,
                  images=runs["hw"]["images"], evaluations=runs, layers=[
                      {**contracts[n].summary(), **sqnr[n], **int_sqnr[n]} for n in contracts],
                  seconds=round(time.perf_counter() - t0, 1))
    return result
