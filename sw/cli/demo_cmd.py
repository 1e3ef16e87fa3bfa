"""``yoloq demo``: the main job on the shared data, end to end, with one summary at the end.

On the real YOLOv5n checkpoint and the COCO subset: quantize (4-bit PWLQ, mix of 3) -> generate the
processing elements' Verilog for every quantized layer (one module per kind of layer, with each
layer's parameter and weight memory files; lint each module) -> calibrate activation scales (once,
for both of the next steps) -> co-simulate the RTL against the integer reference -> co-simulate the layer
unit (PE + integer epilogue) on whole feature maps of six layers (:data:`FEATURE_MAP_LAYERS`) against the
integer-only network -> evaluate FP, fake-quant, hardware-exact and integer-only mAP in one pass over the
images. The two co-simulation steps' simulators (mostly Verilator compiling C++, in other processes) run
beside the mAP step's forward passes. Each step's files land in ``--out``; the summary gives each step's wall
seconds, marks the overlapping ones, and the demo's total wall time.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..paths import data_file

#: The feature maps the demo co-simulates through the layer unit, every position and channel: the first conv,
#: a stride-2 3x3, a 1x1, a conv feeding a Concat, a C3 bottleneck conv before its residual add, and a Detect
#: conv (compared on its accumulators plus offsets, since Detect outputs are not requantized).
FEATURE_MAP_LAYERS = ("model.0.conv", "model.1.conv", "model.2.cv1.conv", "model.2.cv2.conv",
                      "model.2.m.0.cv2.conv", "model.24.m.0")
FEATURE_MAP_IMG = 160  # inference size of the feature-map step (every position of a 640 image takes minutes)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job on the shared data: quantize, Verilog, co-simulation, mAP",
                       description="On the real YOLOv5n and the COCO subset: quantize (4-bit PWLQ mix3), generate "
                                   "and lint the PE's Verilog for every layer, co-simulate the RTL against the "
                                   "integer reference, co-simulate the layer unit (PE + integer epilogue) on "
                                   "whole feature maps of six layers, and compare FP, fake-quant, hardware-exact "
                                   "and integer-only mAP.")
    p.add_argument("--data", metavar="DIR", help="data root (default: $YOLOQ_DATA, then ../shared/data)")
    p.add_argument("--out", default="out/demo", help="folder for the demo's files (default out/demo)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N COCO images")
    p.add_argument("--lanes", type=int, default=16, help="PE lanes for the generated Verilog (default 16)")
    p.add_argument("--sim", choices=("icarus", "verilator"), default="verilator", help="co-simulator")
    p.set_defaults(run=run)


class Steps:
    """Each step's wall time, from its start to its end; steps may overlap, so the total is the demo's own
    wall time, not their sum."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.rows: list[tuple[str, str, float, bool]] = []  # name, outcome, seconds, ran beside the mAP step

    def done(self, name: str, start: float, outcome: str, overlapped: bool = False, end: float | None = None) -> None:
        seconds = (end or time.perf_counter()) - start
        self.rows.append((name, outcome, seconds, overlapped))
        print(f"[{name}] {outcome} ({seconds:.1f} s)", flush=True)

    def table(self) -> str:
        lines = ["| step | outcome | seconds |", "|---|---|---:|"]
        lines += [f"| {name}{' *' if overlapped else ''} | {outcome} | {seconds:.0f} |"
                  for name, outcome, seconds, overlapped in self.rows]
        lines.append(f"| total (wall) | | {time.perf_counter() - self.t0:.0f} |")
        if any(overlapped for *_, overlapped in self.rows):
            lines.append("\n* its simulators (Verilator builds and runs, other processes) ran beside the mAP step's "
                         "forward passes: seconds from the step's start to its end, overlapping the mAP step's")
        return "\n".join(lines)


def run(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from hw.build import build_model
    from sim.runner import cache_dir as sim_cache_dir

    from ..atomic import write_json
    from ..checkpoint import load_model
    from ..eval.coco import load_coco
    from ..intref.contract import LayerContract
    from ..intref.validate import HardwareFormat, hardware_model, validate
    from ..checkpoint.artifact import save_quantized
    from ..quant.model import QuantSpec, quantize_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = data_file("yolov5n/yolov5n.pt", args.data)
    coco_dir = data_file("coco", args.data)
    coco = load_coco(coco_dir, limit=args.limit)
    calib = data_file("coco128/images/train2017", args.data)
    steps = Steps()

    t0 = time.perf_counter()
    model = load_model(weights).model
    spec = QuantSpec("pwlq", 4, "mix3")
    qm = quantize_model(model, spec)
    save_quantized(qm, out / "yolov5n-pwlq4-mix3.yqa", source=str(weights))
    tot = qm.totals()
    steps.done("quantize", t0, f"{len(qm.layers)} convs, saving_paper {tot['saving_paper']:.2f}x, "
                               f"saving_storage {tot['saving_storage']:.2f}x")

    t0 = time.perf_counter()
    names = [n for n, r in qm.layers.items() if r.qt is not None]
    layers = [(LayerContract.from_record(name, qm.layers[name].qt, 8, spec.scale_bits), qm.layers[name].qt)
              for name in names]
    # the co-simulation below runs the same PE modules: it finds them in the simulator's cache
    manifest = build_model(layers, args.lanes, out / "verilog", lint=True, cache=sim_cache_dir())
    lint_failures = sum(m["lint"]["exit_code"] != 0 for m in manifest["modules"])
    steps.done("verilog", t0, f"{len(manifest['modules'])} PE modules ({args.lanes} lanes) for {len(names)} "
                              f"layers, with their memory files, in {out / 'verilog'}; "
                              f"verilator lint failures: {lint_failures}")

    t0 = time.perf_counter()
    fmt = HardwareFormat()
    hardware = hardware_model(qm, fmt, calib)  # calibrated once, for co-simulation and the mAP
    steps.done("calibrate", t0, f"activation scales of {len(names)} convs on {fmt.calib_images} coco128 images")

    # The two co-simulation steps' stimulus is captured here, before the mAP step runs the same hardware model
    # (the capture switches its accumulator keeping on); their simulators, other processes that mostly compile
    # C++, then run in background threads while this thread runs the mAP step's forward passes.
    t_cosim = time.perf_counter()
    cosim_cases = cosim_stimulus(qm, names, coco_dir, hardware)
    t_maps = time.perf_counter()
    map_cases = feature_map_stimulus(qm, coco_dir, calib)
    with ThreadPoolExecutor(max_workers=2) as pool:
        cosim_future = pool.submit(simulate, cosim_cases, args.sim, "pe")
        maps_future = pool.submit(simulate, map_cases, args.sim, "layer")
        t0 = time.perf_counter()
        result = validate(model, qm, coco, fmt, calib, {}, progress=True, hardware=hardware)
        t_map_end = time.perf_counter()
        (cosim, cosim_end), (maps, maps_end) = cosim_future.result(), maps_future.result()
    write_json(out / "cosim.json", cosim.as_json())
    steps.done("co-simulation", t_cosim, f"every weight through the RTL ({args.sim}): {cosim.macs:,} MACs, "
                                         f"{cosim.mismatches} mismatches, {cosim.macs_per_s:,.0f} MACs/s",
               overlapped=True, end=cosim_end)
    write_json(out / "featuremap.json", maps.as_json())
    steps.done("feature maps", t_maps, f"layer units (PE + integer epilogue) on every position and channel of "
                                       f"{len(FEATURE_MAP_LAYERS)} layers at {FEATURE_MAP_IMG} px ({args.sim}): "
                                       f"{maps.outputs_checked:,} output codes, {maps.mismatches} mismatches",
               overlapped=True, end=maps_end)
    write_json(out / "validate.json", result)
    steps.done("mAP", t0, f"FP {result['map50_fp']:.4f}, SW {result['map50_sw']:.4f}, "
                          f"HW {result['map50_hw']:.4f}, INT {result['map50_int']:.4f} mAP@.5 "
                          f"(HW - SW {result['delta_map50']:+.4f}, INT - SW {result['delta_map50_int']:+.4f})",
               end=t_map_end)

    print("\n== yoloq demo summary ==")
    print(f"YOLOv5n (real weights), {result['images']} COCO val2017 images, 4-bit PWLQ mix3, A=8, F=16\n")
    print(steps.table())
    ok = lint_failures == 0 and cosim.ok and maps.ok
    print("\nRTL bit-exact with the software reference: " + ("yes" if ok else "NO"))
    return 0 if ok else 1


def cosim_stimulus(qm, names: list[str], coco_dir: Path, hardware):
    """Every weight of every layer: each output channel's dot product at one position of a real COCO image
    (sim.capture), on the calibrated ``hardware`` model."""
    from sim.capture import image_paths, network_cases

    return network_cases(qm, names, 1, image_paths(coco_dir, 1), None, hardware=hardware)


def feature_map_stimulus(qm, coco_dir: Path, calib: Path):
    """:data:`FEATURE_MAP_LAYERS`, every output position of the first COCO image at :data:`FEATURE_MAP_IMG` px,
    from the integer-only network (sim.featuremap)."""
    from sim.capture import image_paths
    from sim.featuremap import feature_map_cases

    return feature_map_cases(qm, list(FEATURE_MAP_LAYERS), None, image_paths(coco_dir, 1), calib,
                             img_size=FEATURE_MAP_IMG, progress=False)


def simulate(cases, sim: str, unit: str):
    """``cases`` through the RTL (sim.cosim): the PE's accumulators (``unit="pe"``) or the layer unit's output
    codes (``"layer"``), compared with the software's; no progress bars (it runs beside the mAP step).
    Returns (the result, the time it finished)."""
    from sim.cosim import Options, cosimulate

    return cosimulate(cases, Options(sim=sim, unit=unit, progress=False)), time.perf_counter()
