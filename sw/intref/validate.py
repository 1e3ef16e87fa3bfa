"""Hardware mAP against software mAP: one model, three evaluations on the same images.

FP (the checkpoint as loaded), SW (fake-quantized weights, float activations) and HW (every quantized conv
per the integer contract, activations calibrated on coco128).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..eval.coco import CocoSubset, evaluate_many
from ..eval.images import load_letterboxed
from ..quant.model import QuantizedModel
from .calibrate import calibrate
from .compare import activation_sqnr
from .contract import DEFAULT_ACT_BITS, DEFAULT_SCALE_BITS
from .network import build_hardware_model


@dataclass
class HardwareFormat:
    act_bits: int = DEFAULT_ACT_BITS
    scale_bits: int = DEFAULT_SCALE_BITS
    calib_images: int = 32


def hardware_model(qm: QuantizedModel, fmt: HardwareFormat, calib_dir: Path, progress: bool = True,
                   upto: list[str] | None = None):
    """(hardware-exact model, contracts, activation quantizers). With ``upto``, only as far as those layers:
    the convs that run before them are calibrated and made integer (as in the whole network), the rest stay
    fake-quantized floats and must not be relied on."""
    names = [n for n, r in qm.layers.items() if r.qt is not None]
    act_quant = calibrate(qm.model, names, calib_dir, fmt.act_bits, fmt.calib_images, progress=progress,
                          stop_after=upto)
    model, contracts = build_hardware_model(qm, act_quant, fmt.act_bits, fmt.scale_bits, partial=upto is not None)
    return model, contracts, act_quant


def validate(fp_model, qm: QuantizedModel, coco: CocoSubset, fmt: HardwareFormat, calib_dir: Path,
             eval_kwargs: dict, progress: bool = True, with_fp: bool = True, hardware=None) -> dict:
    """mAPs of FP, SW and HW on ``coco`` plus per-layer activation SQNR; the keys ``yoloq hw validate`` writes.

    The models are evaluated in one pass over the images (the same results as three). ``hardware``: the
    result of :func:`hardware_model` for ``qm`` and ``fmt`` when the caller has it already (calibrate once).
    """
    t0 = time.perf_counter()
    hw, contracts, _ = hardware or hardware_model(qm, fmt, calib_dir, progress)
    stride = int(qm.model.stride.max())
    models = {"fp": fp_model, "sw": qm.model, "hw": hw} if with_fp else {"sw": qm.model, "hw": hw}
    runs = evaluate_many(models, coco, stride=stride, progress=progress, desc="eval " + "+".join(models),
                         **eval_kwargs)
    first = coco.image_ids[0]
    image = load_letterboxed(coco.paths[first], first, eval_kwargs.get("img_size", 640), stride)
    sqnr = activation_sqnr(qm.model, hw, torch.from_numpy(image.array)[None].float() / 255.0)
    result = {"map50_sw": runs["sw"]["map50"], "map50_hw": runs["hw"]["map50"],
              "map50_95_sw": runs["sw"]["map50_95"], "map50_95_hw": runs["hw"]["map50_95"],
              "delta_map50": runs["hw"]["map50"] - runs["sw"]["map50"],
              "delta_map50_95": runs["hw"]["map50_95"] - runs["sw"]["map50_95"]}
    if "fp" in runs:
        result.update(map50_fp=runs["fp"]["map50"], map50_95_fp=runs["fp"]["map50_95"])
    result.update(act_bits=fmt.act_bits, scale_bits=fmt.scale_bits, calib_images=fmt.calib_images,
                  images=runs["hw"]["images"], evaluations=runs, layers=[
                      {**contracts[n].summary(), **sqnr[n]} for n in contracts],
                  seconds=round(time.perf_counter() - t0, 1))
    return result
