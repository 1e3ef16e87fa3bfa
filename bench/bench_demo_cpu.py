"""CPU seconds of each of ``yoloq demo``'s steps, run one after another, without and with the heap policy.

The demo's steps (sw.cli.demo_cmd) run in order in a fresh process per variant: quantize, Verilog, calibrate,
stimulus capture (co-simulation and feature maps), ``--sims``: the two co-simulations, then the mAP step. Each
step's CPU seconds are this process's and its children's (user + system, all threads: the simulators are
children), with the system part beside it, so that savings show even when other jobs share the machine and
wall time is noise. ``default``: glibc's malloc as it comes; ``keep``: :func:`sw.heap.keep_freed_memory`
first, as every yoloq command does. The two variants run one after the other in the same run, with empty simulator and
ccache caches each; the mAP figures must agree to the last digit.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread and heap policies before torch loads
except ImportError:
    from common import table

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sw.heap import ENVIRONMENT

REPO = Path(__file__).resolve().parent.parent

STEPS = """
import json, resource, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
from sw.threads import apply_thread_policy
apply_thread_policy()  # before torch; the heap policy only in the "keep" variant
opts = json.loads(sys.argv[2])
if opts["keep"]:
    from sw.heap import keep_freed_memory
    assert keep_freed_memory()
from pathlib import Path
from hw.build import build_model
from sim.runner import cache_dir
from sw.checkpoint import load_model
from sw.cli import demo_cmd as demo
from sw.eval.coco import load_coco
from sw.intref.contract import LayerContract
from sw.intref.validate import HardwareFormat, hardware_model, validate
from sw.paths import data_file
from sw.quant.model import QuantSpec, quantize_model

rows = []
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime, s.ru_stime + c.ru_stime
class step:
    def __init__(self, name): self.name = name
    def __enter__(self): self.t, self.c = time.perf_counter(), cpu()
    def __exit__(self, *exc):
        c = cpu()
        rows.append([self.name, c[0] - self.c[0], c[1] - self.c[1], time.perf_counter() - self.t])

out = Path(tempfile.mkdtemp(prefix="bench-demo-"))
weights, coco_dir = data_file("yolov5n/yolov5n.pt"), data_file("coco")
calib = data_file("coco128/images/train2017")
coco = load_coco(coco_dir, limit=opts["limit"])
with step("quantize"):
    model = load_model(weights).model
    spec = QuantSpec("pwlq", 4, "mix3")
    qm = quantize_model(model, spec, progress=False)
with step("Verilog"):
    names = [n for n, r in qm.layers.items() if r.qt is not None]
    layers = [(LayerContract.from_record(n, qm.layers[n].qt, 8, spec.scale_bits), qm.layers[n].qt) for n in names]
    build_model(layers, 16, out / "verilog", lint=True, cache=cache_dir())
with step("calibrate"):
    fmt = HardwareFormat()
    hardware = hardware_model(qm, fmt, calib, progress=False)
with step("stimulus capture"):
    cosim_cases = demo.cosim_stimulus(qm, names, coco_dir, hardware)
    map_cases = demo.feature_map_stimulus(qm, coco_dir, calib)
if opts["sims"]:
    with step("co-simulation"):
        assert demo.simulate(cosim_cases, "verilator", "pe")[0].ok
    with step("feature maps"):
        assert demo.simulate(map_cases, "verilator", "layer")[0].ok
with step("mAP"):
    result = validate(model, qm, coco, fmt, calib, {}, progress=False, hardware=hardware)
print(json.dumps({"rows": rows, "maps": [result[k] for k in ("map50_fp", "map50_sw", "map50_hw", "map50_int")]}))
"""


def measure(keep: bool, limit: int | None, sims: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}  # bench.common exported the heap policy
    env.update(YOLOQ_SIM_CACHE=tempfile.mkdtemp(prefix="bench-simcache-"),
               CCACHE_DIR=tempfile.mkdtemp(prefix="bench-ccache-"))
    done = subprocess.run([sys.executable, "-c", STEPS, str(REPO), json.dumps({"keep": keep, "limit": limit,
                                                                                 "sims": sims})],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, help="first N COCO images for the mAP step (default: all)")
    ap.add_argument("--sims", action="store_true", help="run the two co-simulations too (Verilator)")
    args = ap.parse_args()
    load = [os.getloadavg()[0]]
    default = measure(False, args.limit, args.sims)
    load.append(os.getloadavg()[0])
    keep = measure(True, args.limit, args.sims)
    load.append(os.getloadavg()[0])
    rows = [[name, cpu, sys_, k_cpu, k_sys, k_cpu / cpu if cpu else float("nan")]
            for (name, cpu, sys_, _), (_, k_cpu, k_sys, _) in zip(default["rows"], keep["rows"])]
    print(table(["step", "CPU s", "of it system", "CPU s, freed memory kept", "of it system", "ratio"], rows))
    print(f"\nmAP@.5 FP/SW/HW/INT: {default['maps']} and {keep['maps']}: "
          f"{'identical' if default['maps'] == keep['maps'] else 'DIFFERENT'}; load {load}")


if __name__ == "__main__":
    main()
