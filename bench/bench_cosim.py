"""Co-simulation throughput (MACs/s through the RTL): Verilator against Icarus, and what a cold build costs.

Real YOLOv5n layers (the N largest, 4-bit PWLQ mix3, activations captured on a COCO image, one position per
layer: every weight of each layer through the PE). Baseline measured in the same run: Icarus, the default
simulator, whose build takes about a second. Verilator runs twice on the same stimulus: with an empty build
cache (Verilator's runtime, elaboration and C++ compilation included), then with the build cached, which is
what a rerun or a second model of the same kind costs.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import tempfile
from pathlib import Path

from sim.capture import image_paths, network_cases
from sim.cosim import Options, cosimulate
from sw.checkpoint import load_model
from sw.paths import data_file
from sw.quant.model import QuantSpec, quantize_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--layers", type=int, default=4, help="the N largest quantized layers of YOLOv5n (default 4)")
    ap.add_argument("--lanes", type=int, default=16)
    args = ap.parse_args()
    qm = quantize_model(load_model(data_file("yolov5n/yolov5n.pt")).model, QuantSpec("pwlq", 4, "mix3"),
                        progress=False)
    sizes = sorted(((r.qt.numel, n) for n, r in qm.layers.items() if r.qt is not None), reverse=True)
    names = [n for _, n in sizes[:args.layers]]
    cases = network_cases(qm, names, 1, image_paths(data_file("coco"), 1),
                          data_file("coco128/images/train2017"), progress=False)
    macs = sum(c.macs for c in cases)
    rows, baseline = [], None
    for sim, runs in (("icarus", ("cold build",)), ("verilator", ("cold build", "cached build"))):
        with tempfile.TemporaryDirectory() as cache:
            for label in runs:
                r = cosimulate(cases, Options(sim=sim, lanes=args.lanes, cache=Path(cache), progress=False))
                assert r.ok, f"{sim}: {r.mismatches} mismatches"  # a benchmark of wrong results is worthless
                rate = r.macs / r.seconds
                simulate = r.timing.get("simulate", 0.0)
                if sim == "icarus":
                    baseline = rate
                rows.append([sim, label, round(r.seconds, 1), round(simulate, 1), round(rate), rate])
    print(f"YOLOv5n, {len(cases)} layers, {macs:,} MACs (every weight once), {args.lanes} lanes, 0 mismatches")
    print(table(["simulator", "build", "wall s", "simulate s (summed over parallel runs)", "MACs/s",
                 "x Icarus (baseline)"],
                [row[:5] + [round(row[5] / baseline, 2)] for row in rows]))


if __name__ == "__main__":
    main()
