"""The published YOLOv7 figures of *Quantizing YOLOv7: A Comprehensive Study* (COCO val2017, FP16 baseline).

Read from ``paper-figures.json`` in the shared reference folder (``<data root>/../reference``), never typed
here. They are for YOLOv7 on all of val2017, so they compare with a sweep's numbers in trend only. The paper
calls affine "uniform" and PWLQ "non-uniform"; its "saving" is the memory saving against FP16, which yoloq's
``saving_paper`` reproduces (codes and parameters, no PWLQ region bit).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from ..errors import DataNotFoundError
from ..paths import data_root

FILE = "paper-figures.json"
# the JSON's keys -> the names reports use
_KEYS = {"P": "precision", "R": "recall", "map50": "map50", "saving": "saving"}


def reference_file() -> Path:
    return data_root().parent / "reference" / FILE


@lru_cache(maxsize=1)
def figures() -> dict:
    """The whole JSON (source, model, images, baseline, table1, table2, text)."""
    path = reference_file()
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataNotFoundError(f"{path}: the paper's figures are needed for the report ({e})") from e


def citation() -> str:
    return figures()["source"]


def model() -> str:
    f = figures()
    return f"{f['model']}, {f['images']} images, FP16 baseline"


def baseline() -> dict[str, float]:
    return {_KEYS[k]: v for k, v in figures()["baseline"].items() if k in _KEYS}


def fig4_peak_bits() -> tuple[int, int]:
    """Fig. 4 (PWLQ, mix of 3): saving / (loss + 1) against k peaks at these bits."""
    lo, hi = figures()["text"]["fig4_peak_bits"]
    return lo, hi


def published(method: str, bits: int | None, granularity: str | None) -> dict[str, float]:
    """The paper's figures for a configuration ({} when it publishes none)."""
    if method == "baseline":
        return baseline()
    for row in figures()["table1"] + figures()["table2"]:
        if (row["method"], row["bits"], row["granularity"]) == (method, bits, granularity):
            return {_KEYS[k]: v for k, v in row.items() if k in _KEYS}
    return {}
