"""Per-layer weight error at every single granularity: the data behind the layers x granularities heatmap.

Each (method, granularity) is one quantization of the whole model, no evaluation, so the table costs
seconds. Cells where the paper's policy leaves a layer in FP16 (channel-wise on a 1x1 conv) are marked,
since their error is not a quantizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_json
from ..quant.model import QuantSpec, quantize_model

HEATMAP_GRANULARITIES = ("layer", "filter", "channel", "fshape", "cshape")
HEATMAP_METHODS = ("pwlq", "affine")
HEATMAP_BITS = 4
LAYER_FILE = "layer_sqnr.json"


def layer_sqnr(model, methods=HEATMAP_METHODS, granularities=HEATMAP_GRANULARITIES, bits: int = HEATMAP_BITS) -> dict:
    """``{"bits", "layers": [names], "shapes": [[o, c, h, w]], "granularities",
    "sqnr_db": {method: {granularity: [dB or None]}}, "fp16": {method: {granularity: [bool]}}}``;
    None is an exact layer (infinite SQNR)."""
    table = {"bits": bits, "layers": None, "shapes": None, "granularities": list(granularities), "sqnr_db": {},
             "fp16": {}}
    for method in methods:
        table["sqnr_db"][method], table["fp16"][method] = {}, {}
        for g in granularities:
            qm = quantize_model(model, QuantSpec(method, bits, g), progress=False)
            table["layers"] = list(qm.layers)
            table["shapes"] = [list(r.shape) for r in qm.layers.values()]
            rows = list(qm.layers.values())
            table["sqnr_db"][method][g] = [r.sqnr_db if abs(r.sqnr_db) != float("inf") else None for r in rows]
            table["fp16"][method][g] = [r.qt is None for r in rows]
    return table


def cached_layer_sqnr(root: str | Path, model, bits: int = HEATMAP_BITS) -> dict:
    """The table from ``root/layer_sqnr.json`` when it was made for ``bits``, else computed and written there.

    The results folder is bound to one checkpoint (see :meth:`ResultStore.claim`), so a cached table is valid.
    """
    path = Path(root) / LAYER_FILE
    if path.exists():
        table = json.loads(path.read_text())
        if table.get("bits") == bits and table.get("granularities") == list(HEATMAP_GRANULARITIES) \
                and list(table.get("sqnr_db", {})) == list(HEATMAP_METHODS) and table.get("shapes"):
            return table
    table = layer_sqnr(model, bits=bits)
    write_json(path, table)
    return table
