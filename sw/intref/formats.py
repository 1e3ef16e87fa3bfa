"""Where the hardware format starts to cost mAP: hardware-exact evaluation over act-bits x scale-bits.

Each point is written to ``OUT/points/A<a>-F<f>.json`` atomically as soon as it finishes, so an interrupted
sweep resumes where it stopped. Calibration depends only on A and is shared by the points that use it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from ..atomic import write_json, write_text
from ..eval.coco import CocoSubset, evaluate
from ..quant.model import QuantizedModel
from .calibrate import calibrate
from .network import build_hardware_model


def _point_path(out: Path, a: int, f: int) -> Path:
    return out / "points" / f"A{a}-F{f}.json"


def run_formats(qm: QuantizedModel, coco: CocoSubset, act_bits: list[int], scale_bits: list[int],
                calib_dir: Path, calib_images: int, out: Path, eval_kwargs: dict, progress: bool = True) -> dict:
    """Evaluate SW once and HW at every (A, F); returns {"sw": result, "points": [...]}."""
    out = Path(out)
    stride = int(qm.model.stride.max())
    sw_path = out / "points" / "sw.json"
    if sw_path.exists():
        sw = json.loads(sw_path.read_text())
    else:
        sw = evaluate(qm.model, coco, stride=stride, progress=progress, desc="eval sw", **eval_kwargs)
        write_json(sw_path, sw)
    names = [n for n, r in qm.layers.items() if r.qt is not None]
    todo = [(a, f) for a in act_bits for f in scale_bits if not _point_path(out, a, f).exists()]
    calibrated = {}
    for a, f in tqdm(todo, desc="formats", unit="point", disable=not progress):
        if a not in calibrated:
            calibrated[a] = calibrate(qm.model, names, calib_dir, a, calib_images, progress=False)
        hw, _ = build_hardware_model(qm, calibrated[a], a, f)
        r = evaluate(hw, coco, stride=stride, progress=False, **eval_kwargs)
        write_json(_point_path(out, a, f), {"act_bits": a, "scale_bits": f, **r,
                                            "delta_map50": r["map50"] - sw["map50"],
                                            "delta_map50_95": r["map50_95"] - sw["map50_95"]})
    points = [json.loads(_point_path(out, a, f).read_text()) for a in act_bits for f in scale_bits]
    return {"sw": sw, "points": points}


def formats_table(result: dict) -> str:
    sw = result["sw"]
    lines = [f"SW (fake-quant) mAP@.5 {sw['map50']:.4f}, mAP@.5:.95 {sw['map50_95']:.4f}", "",
             "| act bits A | scale bits F | HW mAP@.5 | delta mAP@.5 | HW mAP@.5:.95 | delta mAP@.5:.95 |",
             "|---:|---:|---:|---:|---:|---:|"]
    for p in result["points"]:
        lines.append(f"| {p['act_bits']} | {p['scale_bits']} | {p['map50']:.4f} | {p['delta_map50']:+.4f} | "
                     f"{p['map50_95']:.4f} | {p['delta_map50_95']:+.4f} |")
    return "\n".join(lines) + "\n"


def formats_plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for a in sorted({p["act_bits"] for p in result["points"]}):
        pts = sorted((p["scale_bits"], p["delta_map50"]) for p in result["points"] if p["act_bits"] == a)
        ax.plot([f for f, _ in pts], [d for _, d in pts], marker="o", label=f"A = {a} bits")
    ax.axhline(-0.005, color="grey", linestyle="--", linewidth=1, label="goal: -0.005")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("scale mantissa bits F")
    ax.set_ylabel("mAP@.5 of HW minus SW")
    ax.set_title("Hardware format cost (integer contract vs fake-quant)")
    ax.set_xticks(sorted({p["scale_bits"] for p in result["points"]}))
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def write_report(result: dict, out: Path) -> None:
    write_json(out / "formats.json", result)
    write_text(out / "formats.md", formats_table(result))
    formats_plot(result, out / "formats.png")
