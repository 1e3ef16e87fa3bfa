"""Memory saving on YOLOv7's shapes (generated weights, deploy form) beside the paper's Table I and II figures.

    python bench/yolov7_savings.py

For uniform (affine) and PWLQ at 4 bits, each of the paper's granularities and the mix of 4: ``saving_paper``
(codes at k bits and per-group parameters, as the paper counts) and ``saving_storage`` (the region bit too),
with the paper's published saving from ``../shared/reference/paper-figures.json``. The savings depend on the
weights only through the mixes' per-layer choices, so generated weights stand in for the real ones.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

from sw.checkpoint.official import generate_weights
from sw.models import YoloModel, builtin_config, to_deploy
from sw.quant.model import QuantSpec, quantize_model
from sw.sweep import paper


def main() -> None:
    model = to_deploy(generate_weights(YoloModel(builtin_config("yolov7-training")), seed=0))
    rows = []
    for method in ("affine", "pwlq"):
        for gran in ("filter", "fshape", "cshape", "channel", "mix4"):
            totals = quantize_model(model, QuantSpec(method, 4, gran), progress=False).totals()
            pub = paper.published(method, 4, gran).get("saving")
            rows.append([method, gran, f"{totals['saving_paper']:.2f}", f"{totals['saving_storage']:.2f}",
                         "-" if pub is None else f"{pub:.2f}"])
            print(rows[-1], flush=True)
    print(table(["method", "granularity", "saving_paper", "saving_storage", "paper's saving"], rows))


if __name__ == "__main__":
    main()
