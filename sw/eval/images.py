"""Image loading and letterboxing with YOLOv7 test.py conventions.

The long side is first resized to ``img_size`` (area averaging when shrinking, bilinear when enlarging), then
the image is padded with grey 114 to the next multiple of the model stride ("minimal", rect padding).
Images of equal padded shape are batched together, so batching never adds padding.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import limits
from ..errors import DataNotFoundError

PAD_VALUE = 114
# yoloq checks sizes itself (limits.MAX_IMAGE_PIXELS, below PIL's threshold) before decoding.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageSkipped(DataNotFoundError):
    """An image that cannot be used (unreadable, too large, or not the size its annotation says)."""


# The network's input is the image's uint8 values / 255 in float32 (as ``tensor.float() / 255.0``; the same
# float32 division in numpy, equal for all 256 values: tested).
SCALE = np.float32(255)


@dataclass
class Placement:
    """Where one image sits in its letterboxed frame: what maps boxes back to the original."""

    image_id: int
    orig_hw: tuple[int, int]
    gain: float                # letterboxed pixels per original pixel
    pad: tuple[float, float]   # (left, top) padding in letterboxed pixels


@dataclass
class Letterboxed(Placement):
    """One preprocessed image: its CHW uint8 array and its placement."""

    array: np.ndarray          # 3 x H x W, uint8, RGB


def letterbox_shape(orig_hw: tuple[int, int], img_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(resized h, w) and (padded H, W) for an image of ``orig_hw``."""
    h0, w0 = orig_hw
    r = img_size / max(h0, w0)
    h, w = (h0, w0) if r == 1 else (max(1, int(round(h0 * r))), max(1, int(round(w0 * r))))
    return (h, w), (math.ceil(h / stride) * stride, math.ceil(w / stride) * stride)


_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, MemoryError,
                  Image.DecompressionBombError)


def _open(path: Path) -> Image.Image:
    """Open an image file for its header; a FIFO or device (which would block or never end) is refused."""
    if not Path(path).is_file():
        raise ImageSkipped(f"image {path}: not a regular file")
    try:
        im = Image.open(path)
    except _DECODE_ERRORS as e:
        raise ImageSkipped(f"cannot read image {path}: {type(e).__name__}: {str(e)[:100]}") from None
    w0, h0 = im.size
    if w0 < 1 or h0 < 1 or w0 * h0 > limits.MAX_IMAGE_PIXELS:
        im.close()
        raise ImageSkipped(f"image {path}: {w0} x {h0} pixels (at most {limits.MAX_IMAGE_PIXELS} accepted)")
    return im


def image_size(path: Path) -> tuple[int, int]:
    """(h, w) of an image from its header, checked against the limit, without decoding it."""
    with _open(path) as im:
        return im.size[1], im.size[0]


def _decode(path: Path, img_size: int, stride: int, expected_hw: tuple[int, int] | None):
    """The image decoded and resized (h x w x 3 uint8, RGB), its original (h0, w0) and padded (H, W) shapes;
    :class:`ImageSkipped` as :func:`load_letterboxed` says."""
    try:
        with _open(path) as im:
            w0, h0 = im.size
            if expected_hw is not None and (h0, w0) != tuple(expected_hw):
                raise ImageSkipped(f"image {path}: {w0} x {h0} pixels, the annotation says "
                                   f"{expected_hw[1]} x {expected_hw[0]}")
            if im.mode != "RGB":  # convert() of an RGB image is a copy
                im = im.convert("RGB")
            (h, w), (H, W) = letterbox_shape((h0, w0), img_size, stride)
            if (h, w) != (h0, w0):
                im = im.resize((w, h), Image.Resampling.BOX if h < h0 else Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8), (h0, w0), (H, W)
    except ImageSkipped:
        raise
    except _DECODE_ERRORS as e:
        raise ImageSkipped(f"cannot read image {path}: {type(e).__name__}: {str(e)[:100]}") from None


def _place(image_id: int, hw: tuple[int, int], orig_hw: tuple[int, int], padded: tuple[int, int]):
    """(placement, top, left) of an image resized to ``hw`` in its ``padded`` frame: centred, YOLOv7's rounding."""
    (h, w), (H, W) = hw, padded
    dw, dh = (W - w) / 2, (H - h) / 2
    return Placement(image_id, orig_hw, h / orig_hw[0], (dw, dh)), int(round(dh - 0.1)), int(round(dw - 0.1))


def load_letterboxed(path: Path, image_id: int, img_size: int, stride: int,
                     expected_hw: tuple[int, int] | None = None) -> Letterboxed:
    """Decode and letterbox one image; :class:`ImageSkipped` if it is unreadable, larger than the limit, or
    (with ``expected_hw``) not the size its annotation gives, all checked from the header before decoding."""
    arr, orig_hw, (H, W) = _decode(path, img_size, stride, expected_hw)
    (h, w) = arr.shape[:2]
    place, top, left = _place(image_id, (h, w), orig_hw, (H, W))
    out = np.full((H, W, 3), PAD_VALUE, dtype=np.uint8)
    out[top:top + h, left:left + w] = arr
    return Letterboxed(**vars(place), array=np.ascontiguousarray(out.transpose(2, 0, 1)))


def _load_normalized(out: np.ndarray, path: Path, image_id: int, img_size: int, stride: int,
                     expected_hw: tuple[int, int]) -> Placement:
    """Decode and letterbox one image straight into ``out`` (3 x H x W float32: the network's input, see
    :data:`SCALE`), its pixels and its padding each written once; the checks of :func:`load_letterboxed`."""
    arr, orig_hw, padded = _decode(path, img_size, stride, expected_hw)
    (h, w) = arr.shape[:2]
    if padded != out.shape[1:]:
        raise ValueError(f"image {path}: letterboxed to {padded}, its batch is {out.shape[1:]}")
    place, top, left = _place(image_id, (h, w), orig_hw, padded)
    pad = np.float32(PAD_VALUE) / SCALE
    out[:, :top], out[:, top + h:] = pad, pad
    out[:, top:top + h, :left], out[:, top:top + h, left + w:] = pad, pad
    # the channels first in uint8 (a cheap copy), then one division each: faster than dividing a strided view
    np.divide(np.ascontiguousarray(arr.transpose(2, 0, 1)), SCALE, out=out[:, top:top + h, left:left + w])
    return place


def shape_batches(items: list[tuple[int, tuple[int, int]]], img_size: int, stride: int, batch_size: int):
    """Group (image_id, orig_hw) into batches of equal letterboxed shape; deterministic order."""
    by_shape: dict[tuple[int, int], list[int]] = {}
    for image_id, hw in items:
        by_shape.setdefault(letterbox_shape(hw, img_size, stride)[1], []).append(image_id)
    batches = []
    for shape in sorted(by_shape):
        ids = by_shape[shape]
        batches += [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    return batches


def prefetch_batches(batches, paths: dict[int, Path], img_size: int, stride: int, workers: int = 2,
                     sizes: dict[int, tuple[int, int]] | None = None, skipped: dict[int, str] | None = None,
                     normalized: bool = False):
    """Yield (uint8 NCHW tensor, [Letterboxed]) per batch, decoding the next batch while the model runs.

    With ``skipped``, an image that cannot be used is recorded there (id -> reason) and left out of its
    batch instead of stopping the run; ``sizes`` (id -> annotated (h, w)) are then enforced. With
    ``normalized`` (which needs ``sizes``), (float32 NCHW tensor, [Placement]) instead: the network's input,
    equal to the uint8 batch's ``.float() / 255.0``, which the decoding threads write straight into the batch
    (no uint8 batch, no second pass over it)."""
    if normalized and sizes is None:
        raise ValueError("prefetch_batches(normalized=True) needs the images' sizes")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(ids):
            if not normalized:
                return None, [pool.submit(load_letterboxed, paths[i], i, img_size, stride, sizes and sizes[i])
                              for i in ids]
            H, W = letterbox_shape(sizes[ids[0]], img_size, stride)[1]
            out = np.empty((len(ids), 3, H, W), dtype=np.float32)
            return out, [pool.submit(_load_normalized, out[k], paths[i], i, img_size, stride, sizes[i])
                         for k, i in enumerate(ids)]

        pending = submit(batches[0]) if batches else None
        for k in range(len(batches)):
            out, futures = pending
            items, rows = [], []
            for row, (image_id, f) in enumerate(zip(batches[k], futures)):
                try:
                    items.append(f.result())
                    rows.append(row)
                except ImageSkipped as e:
                    if skipped is None:
                        raise
                    skipped[image_id] = str(e)
            pending = submit(batches[k + 1]) if k + 1 < len(batches) else None
            if not items:
                continue
            if out is None:
                yield torch.from_numpy(np.stack([it.array for it in items])), items
            else:
                yield torch.from_numpy(out if len(rows) == len(out) else out[rows]), items
