"""Box conversions and IoU (xyxy in pixels unless said otherwise)."""

from __future__ import annotations

import torch


def box_area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU, shape [len(a), len(b)]."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def unletterbox(boxes: torch.Tensor, gain: float, pad: tuple[float, float], orig_hw: tuple[int, int]) -> torch.Tensor:
    """Map xyxy boxes from letterboxed-image pixels back to the original image, clipped to it."""
    out = boxes.clone()
    out[:, [0, 2]] = (out[:, [0, 2]] - pad[0]) / gain
    out[:, [1, 3]] = (out[:, [1, 3]] - pad[1]) / gain
    out[:, [0, 2]] = out[:, [0, 2]].clamp(0, orig_hw[1])
    out[:, [1, 3]] = out[:, [1, 3]].clamp(0, orig_hw[0])
    return out
