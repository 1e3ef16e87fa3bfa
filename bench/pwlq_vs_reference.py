"""yoloq's PWLQ against the PWLQ authors' reference, layer by layer, per output filter (the owners' goal:
yoloq's weight MSE no larger on any layer, at k = 3, 4 and 6, with the breakpoint searched or approximated).

The reference (:func:`reference_mse`) is the authors' definition and code (Fang et al., ECCV 2020; see
``../shared/reference/paper-figures.md``, "PWLQ as its authors define it"), in float64 numpy, vectorised over
the groups of a layer only: centre (-p, p) k-bit full-range symmetric; tails [p, m] (k-1)-bit uniform from p
to m (the negative one from -m to -p: the same levels); the breakpoint searched coarse to fine (p / m in
np.arange(0.1, 1.0, 0.1), then np.arange(best - 10 step, best + 10 step, step) for step 0.01 and 0.001, each
candidate scored on every weight, the first least error kept) or approximated, p = m ln(0.86143114 m' +
0.607901097496529) / m' with m' = m / (sigma + 1e-12), sigma unbiased. tests/test_pwlq_reference.py checks
it against a plain loop transcription on real layers.

    python bench/pwlq_vs_reference.py [--yolov7-every 8] [--json OUT.json] [--before BEFORE.json] [--md OUT.md]
    python bench/pwlq_vs_reference.py --from OUT.json [--before BEFORE.json] --md OUT.md   # tables only

writes the per-layer table of every conv of the real YOLOv5n (and a sample of generated YOLOv7 layers) with
a summary; ``--before`` adds a column of yoloq's MSE from an earlier run's ``--json`` (another version of
the code), so a change is shown per layer.
"""

from __future__ import annotations

try:
    from .common import table  # first: it applies the thread policy before torch loads
except ImportError:
    from common import table

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

from sw.atomic import write_text
from sw.checkpoint import load_model
from sw.checkpoint.official import generate_weights
from sw.models import YoloModel, builtin_config, to_deploy
from sw.paths import data_file
from sw.quant.quantizer import quantize_tensor
from sw.quant.record import dequantize

BITS = (3, 4, 6)
MODES = ("search", "approx")
# "worse" means by more than float rounding: yoloq rounds in float32, the reference in float64, so with the
# same breakpoint (approx) the two differ by up to ~1e-7 relative either way
ROUNDING = 1e-6


def _symmetric(x, bits, maxv):
    scale = 2 * maxv / (2 ** bits - 1)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round(np.clip(x, -maxv, maxv) / safe), -2 ** (bits - 1), 2 ** (bits - 1) - 1)
    return q * scale


def _affine(x, bits, minv, maxv):
    scale = (maxv - minv) / (2 ** bits - 1)
    safe = np.where(scale > 0, scale, 1.0)
    q = np.clip(np.round((np.clip(x, minv, maxv) - minv) / safe), 0, 2 ** bits - 1)
    return q * scale + minv


def reference_pwlq(w: np.ndarray, bits: int, p: np.ndarray) -> np.ndarray:
    """The authors' PWLQ of every row of ``w`` [G, N] (float64) at breakpoints ``p`` [G, 1]."""
    m = np.abs(w).max(1, keepdims=True)
    has_tail = m > p
    pos = np.where(has_tail, _affine(w, bits - 1, p, m), m)
    neg = np.where(has_tail, _affine(w, bits - 1, -m, -p), -m)
    return np.where((w > -p) & (w < p), _symmetric(w, bits, p), np.where(w >= p, pos, neg))


def _errors(w, bits, p):
    return ((w - reference_pwlq(w, bits, p)) ** 2).sum(1, keepdims=True)


def reference_search(w: np.ndarray, bits: int) -> np.ndarray:
    """Per-row least squared error along the authors' coarse-to-fine path, [G, 1]."""
    m = np.abs(w).max(1, keepdims=True)
    best_err = np.full_like(m, np.inf)
    best = np.zeros_like(m)
    for ratio in np.arange(0.1, 1.0, 0.1):
        err = _errors(w, bits, ratio * m)
        better = err < best_err
        best, best_err = np.where(better, ratio, best), np.where(better, err, best_err)
    for step in (0.01, 0.001):
        grids = [np.arange(b - 10 * step, b + 10 * step, step) for b in best[:, 0]]  # as the authors, per group
        for j in range(max(len(g) for g in grids)):
            ratio = np.array([[g[j] if j < len(g) else -1.0] for g in grids])
            err = np.where(ratio > 0, _errors(w, bits, ratio * m), np.inf)
            better = err < best_err
            best, best_err = np.where(better, ratio, best), np.where(better, err, best_err)
    return best_err


def reference_approx(w: np.ndarray, bits: int) -> np.ndarray:
    m = np.abs(w).max(1, keepdims=True)
    std = w.std(1, ddof=1, keepdims=True) + 1e-12
    m_norm = m / std
    p = np.log(0.86143114 * m_norm + 0.607901097496529) / m_norm * m
    return _errors(w, bits, p)


def reference_mse(w: torch.Tensor, bits: int, mode: str) -> float:
    """The authors' PWLQ MSE of conv weight ``w``, per output filter."""
    rows = w.double().reshape(w.shape[0], -1).numpy()
    err = reference_search(rows, bits) if mode == "search" else reference_approx(rows, bits)
    return float(err.sum() / rows.size)


def yoloq_mse(w: torch.Tensor, bits: int, mode: str) -> float:
    qt = quantize_tensor(w, "pwlq", bits, "filter", mode)
    return float((dequantize(qt, torch.float64) - w.double()).square().sum() / w.numel())


def layers(yolov7_every: int) -> dict[str, dict[str, torch.Tensor]]:
    v5 = to_deploy(load_model(data_file("yolov5n/yolov5n.pt")).model).conv_layers()
    v7 = to_deploy(generate_weights(YoloModel(builtin_config("yolov7-training")), seed=0)).conv_layers()
    names7 = list(v7)
    pick7 = sorted(set(names7[::yolov7_every]) | {"model.0.conv", "model.104.rbr_reparam"}, key=names7.index)
    return {"YOLOv5n": {n: c.weight.detach().float() for n, c in v5.items()},
            "YOLOv7 (generated)": {n: v7[n].weight.detach().float() for n in pick7}}


def _geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def markdown(rows: list[dict], before: dict | None, command: str) -> str:
    out = ["# yoloq's PWLQ against the authors' reference, per layer",
           "", f"Generated by `{command}` (bench/pwlq_vs_reference.py); do not edit by hand.", "",
           "Weight MSE per layer, PWLQ per output filter, equal bits and levels. *ratio* = yoloq / reference: "
           "the owners' goal is ratio <= 1 on every layer. *Worse* counts layers with ratio > 1 + 1e-6: yoloq "
           "rounds in float32 and the reference in float64, so with the same breakpoint (approx) they differ by "
           "up to ~1e-7 either way. The reference is the authors' definition and search (see the script's "
           "docstring)." + (" *yoloq before* is the same measurement on an "
                                                     "earlier version of yoloq." if before else ""), "",
           "## Summary", ""]
    summary = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for mode in MODES:
            for bits in BITS:
                sel = [r for r in rows if (r["model"], r["mode"], r["bits"]) == (model, mode, bits)]
                ratios = [r["yoloq"] / r["reference"] for r in sel if r["reference"] > 0]
                worst = max(sel, key=lambda r: r["yoloq"] / r["reference"] if r["reference"] > 0 else 0)
                line = [model, mode, bits, f"{sum(x > 1 + ROUNDING for x in ratios)}/{len(sel)}",
                        f"{_geomean(ratios):.4f}", f"{max(ratios):.7f} ({worst['layer']})"]
                if before:
                    old = [before[f"{model}|{r['layer']}|{mode}|{bits}"] / r["reference"] for r in sel]
                    line += [f"{sum(x > 1 + ROUNDING for x in old)}/{len(sel)}", f"{_geomean(old):.4f}",
                             f"{max(old):.4f}"]
                summary.append(line)
    out.append(table(["model", "mode", "k", "layers where yoloq is worse", "geo-mean ratio", "worst ratio"]
                     + (["before: worse", "before: geo-mean", "before: worst"] if before else []), summary))
    for model in dict.fromkeys(r["model"] for r in rows):
        for mode in MODES:
            for bits in BITS:
                sel = [r for r in rows if (r["model"], r["mode"], r["bits"]) == (model, mode, bits)]
                head = ["layer", "shape", "yoloq MSE", "reference MSE", "ratio"]
                body = []
                for r in sel:
                    line = [r["layer"], "x".join(map(str, r["shape"])), f"{r['yoloq']:.6g}", f"{r['reference']:.6g}",
                            f"{r['yoloq'] / r['reference']:.7f}" if r["reference"] > 0 else "-"]
                    if before:
                        old = before.get(f"{model}|{r['layer']}|{mode}|{bits}")
                        line[2:2] = [f"{old:.6g}" if old is not None else "-"]
                    body.append(line)
                if before:
                    head[2:2] = ["yoloq before"]
                out += ["", f"## {model}, {mode}, k = {bits}", "", table(head, body)]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--yolov7-every", type=int, default=8, help="every Nth conv of generated YOLOv7 (0: none)")
    ap.add_argument("--json", help="write every measurement here (yoloq and reference MSE per layer)")
    ap.add_argument("--before", help="a --json file from another version of yoloq, shown as 'yoloq before'")
    ap.add_argument("--md", help="write the markdown table here")
    ap.add_argument("--yoloq-only", action="store_true", help="measure yoloq only (for a --before file)")
    ap.add_argument("--from", dest="source", metavar="JSON", help="no measurement: tables from a --json file")
    args = ap.parse_args()
    if args.source:
        with open(args.source) as fh:
            rows = json.load(fh)
        models = {}
    else:
        models = layers(args.yolov7_every) if args.yolov7_every else {k: v for k, v in layers(1).items() if "v5" in k}
        rows = []
    for model, convs in models.items():
        for name, w in convs.items():
            t0 = time.perf_counter()
            for mode in MODES:
                for bits in BITS:
                    ref = float("nan") if args.yoloq_only else reference_mse(w, bits, mode)
                    rows.append({"model": model, "layer": name, "shape": list(w.shape), "mode": mode, "bits": bits,
                                 "yoloq": yoloq_mse(w, bits, mode), "reference": ref})
            print(f"{model} {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if args.json:
        write_text(args.json, json.dumps(rows, indent=1))
    if args.md:
        before = None
        if args.before:
            with open(args.before) as fh:
                before = {f"{r['model']}|{r['layer']}|{r['mode']}|{r['bits']}": r["yoloq"] for r in json.load(fh)}
        command = "python " + " ".join(["bench/pwlq_vs_reference.py", *sys.argv[1:]])
        write_text(args.md, markdown(rows, before, command))


if __name__ == "__main__":
    main()
