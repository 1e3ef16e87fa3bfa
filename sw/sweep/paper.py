"""The published YOLOv7 figures of *Quantizing YOLOv7: A Comprehensive Study* (COCO val2017, FP16 baseline).

Only figures stated in the paper are here; anything else is unknown and reports show it as "—". They are
for YOLOv7 on all of val2017, so they compare with a sweep's numbers in trend only.
"""

from __future__ import annotations

CITATION = "Baghbanbashi, Raji, Ghavami: Quantizing YOLOv7: A Comprehensive Study"
MODEL = "YOLOv7, COCO val2017 (5,000 images), FP16 baseline"

BASELINE = {"precision": 0.724, "recall": 0.635, "map50": 0.691}

# (method, bits, granularity) -> the figures the paper publishes for it. "saving" is its memory saving
# against FP16, which yoloq's ``saving_paper`` reproduces (codes and parameters, no PWLQ region bit).
# The paper calls affine "uniform".
CONFIGS: dict[tuple[str, int, str], dict[str, float]] = {
    ("affine", 4, "filter"): {"saving": 3.97},
    ("affine", 4, "fshape"): {"saving": 3.93},
    ("affine", 4, "cshape"): {"map50": 0.657, "saving": 3.93},
    ("affine", 4, "channel"): {"saving": 1.68},
    ("pwlq", 4, "filter"): {"saving": 3.94},
    ("pwlq", 4, "fshape"): {"saving": 3.87},
    ("pwlq", 4, "cshape"): {"map50": 0.680, "saving": 3.88},
    ("pwlq", 4, "channel"): {"saving": 1.68},
    ("affine", 4, "mix3"): {"map50": 0.666, "saving": 3.92},
    ("pwlq", 4, "mix3"): {"map50": 0.681, "saving": 3.86},
}

# Fig. 4 (PWLQ, mix of 3): saving / (loss + 1) against k peaks at 5-6 bits.
FIG4_PEAK_BITS = (5, 6)


def published(method: str, bits: int | None, granularity: str | None) -> dict[str, float]:
    """The paper's figures for a configuration ({} when it publishes none)."""
    if method == "baseline":
        return dict(BASELINE)
    return dict(CONFIGS.get((method, bits, granularity), {}))
