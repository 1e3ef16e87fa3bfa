"""A sweep's outputs: ``results.csv`` and ``results.json`` (one row per configuration) and ``report.md``,
laid out like the paper's Tables I and II with its YOLOv7 figures beside ours, plus the Fig. 4 and
equal-storage tables.

``results.csv`` holds metrics only, floats rounded, so two runs of the same sweep give the same bytes
whatever executor ran them; timings and per-layer detail go to ``results.json``. ``report.md`` has no
timings either, so regenerating it changes it only when results change.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..atomic import write_json, write_text
from . import paper
from .analysis import equal_storage_pairs, find, kbit_series, pareto_front, peak
from .layers import HEATMAP_GRANULARITIES
from .plan import PAPER_BITS, REFERENCE_8BIT, TABLE1_GRANULARITIES, TABLE2_GRANULARITIES
from .store import OK

CSV_FIELDS = ("key", "method", "bits", "granularity", "rounding", "bias_correction", "status", "precision", "recall", "map50", "map50_95",
              "map50_loss_pp", "saving_paper", "saving_storage", "mse", "error")
DASH = "—"
METHOD_NAMES = {"affine": "Uniform (affine)", "pwlq": "PWLQ", "baseline": "Baseline"}
GRANULARITY_NAMES = {"layer": "layer", "filter": "filter", "channel": "channel", "fshape": "F-shape",
                     "cshape": "C-shape", "mix3": "mix of 3", "mix4": "mix of 4", "fp16": "FP16"}


# ---------------------------------------------------------------- results.csv / results.json

def csv_value(field: str, value) -> str:
    """Text of one CSV cell: floats to 6 decimals, except the MSE (~1e-5 and below) to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if field == "mse" else f"{round(value, 6):.6f}"
    return str(value)


def format_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([csv_value(f, r.get(f)) for f in CSV_FIELDS])
    return out.getvalue()


def results_json(rows: list[dict], records: dict[str, dict | None], settings: dict, wall_seconds: float | None) -> dict:
    """Everything: settings, this invocation's wall time, the compute time summed over configurations (each
    measured where it ran, whenever that was), and per configuration its row, timings, device and per-layer
    choices."""
    out = []
    for r in rows:
        rec = records.get(r["key"]) or {}
        extra = {"timing": rec.get("timing"), "device": rec.get("device"), "threads": rec.get("threads")}
        if rec.get("status") == OK:
            extra["layers"] = rec["quant"].get("layers", [])
        else:
            extra["traceback"] = rec.get("traceback", "")
        out.append({**r, **extra})
    compute = sum((row["timing"] or {}).get("total_s", 0.0) for row in out)
    return {"settings": settings, "wall_seconds": wall_seconds, "compute_seconds": round(compute, 1), "rows": out}


# ---------------------------------------------------------------- report.md pieces

def fmt(value, spec: str = ".3f", suffix: str = "") -> str:
    return DASH if value is None else f"{value:{spec}}{suffix}"


def _x(value) -> str:
    return fmt(value, ".2f", "×")


def _label(r: dict) -> tuple[str, str]:
    return METHOD_NAMES.get(r["method"], r["method"]), GRANULARITY_NAMES.get(r["granularity"], r["granularity"])


def _chosen(counts: dict) -> str:
    return ", ".join(f"{GRANULARITY_NAMES.get(g, g)} {n}" for g, n in counts.items()) or DASH


def _table(head: list[str], align: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _config_rows(rows: list[dict], wanted: list[tuple], chosen: bool) -> list[list[str]]:
    body = []
    for method, bits, granularity in wanted:
        r = find(rows, method, bits, granularity)
        pub = paper.published(method, bits, granularity)
        m, g = METHOD_NAMES[method], GRANULARITY_NAMES[granularity]
        if r is None:
            failed = next((x for x in rows if (x["method"], x["bits"], x["granularity"]) == (method, bits, granularity)), None)
            if failed is None:
                continue  # not in this sweep's plan
            cells = ["failed"] + [DASH] * 5 + ([DASH] if chosen else [])
        else:
            cells = [fmt(r["precision"]), fmt(r["recall"]), fmt(r["map50"]), fmt(r["map50_95"]),
                     _x(r["saving_paper"]), _x(r["saving_storage"])] + ([_chosen(r["granularity_counts"])] if chosen else [])
        body.append([m, g, str(bits)] + cells + [fmt(pub.get("precision")), fmt(pub.get("recall")),
                                                 fmt(pub.get("map50")), _x(pub.get("saving"))])
    return body


def _config_table(rows, wanted, chosen=False) -> str:
    body = _config_rows(rows, wanted, chosen)
    if not body:
        return ""
    head = ["method", "granularity", "bits", "P", "R", "mAP@.5", "mAP@.5:.95", "saving", "saving (storage)"]
    head += (["chosen per layer"] if chosen else []) + ["paper P", "paper R", "paper mAP@.5", "paper saving"]
    align = ["---", "---", "---:"] + ["---:"] * 6 + (["---"] if chosen else []) + ["---:"] * 4
    return _table(head, align, body)


def baseline_section(rows: list[dict]) -> str:
    r = find(rows, "baseline", None, None)
    pub = paper.baseline()
    ours = [fmt(r[k]) for k in ("precision", "recall", "map50", "map50_95")] if r else [DASH] * 4
    return "## Baseline (unquantized)\n\n" + _table(
        ["model", "P", "R", "mAP@.5", "mAP@.5:.95", "paper P", "paper R", "paper mAP@.5", "paper mAP@.5:.95"],
        ["---"] + ["---:"] * 8,
        [["checkpoint as stored"] + ours + [fmt(pub["precision"]), fmt(pub["recall"]), fmt(pub["map50"]), DASH]])


def table1_section(rows: list[dict]) -> str:
    wanted = [(m, PAPER_BITS, g) for m in ("affine", "pwlq") for g in TABLE1_GRANULARITIES] + [REFERENCE_8BIT]
    table = _config_table(rows, wanted)
    if not table:
        return ""
    return ("## Table I: 4-bit quantization at each granularity\n\n" + table + "\n" + _method_duel(rows) +
            "The 8-bit filter-wise row is a near-lossless reference the paper does not list. "
            "Channel-wise leaves 1x1 convs in FP16 (as the paper does), hence its small saving.\n")


def _method_duel(rows: list[dict]) -> str:
    """One sentence: at how many 4-bit granularities PWLQ beats uniform on mAP@.5 (the paper's main claim)."""
    duels = [(g, find(rows, "pwlq", PAPER_BITS, g), find(rows, "affine", PAPER_BITS, g)) for g in TABLE1_GRANULARITIES]
    duels = [(g, p, a) for g, p, a in duels if p and a]
    if not duels:
        return ""
    wins = [GRANULARITY_NAMES[g] for g, p, a in duels if p["map50"] > a["map50"]]
    return (f"At 4 bits PWLQ scores a higher mAP@.5 than uniform at {len(wins)} of {len(duels)} granularities"
            + (f" ({', '.join(wins)})" if wins else "") + ". The paper gives both methods' mAP@.5 only at C-shape, "
            "where PWLQ wins too (0.680 against 0.657).\n\n")


def table2_section(rows: list[dict]) -> str:
    wanted = [(m, PAPER_BITS, g) for m in ("affine", "pwlq") for g in TABLE2_GRANULARITIES]
    table = _config_table(rows, wanted, chosen=True)
    if not table:
        return ""
    note = ("\nEach layer takes the candidate granularity with the least weight MSE; \"chosen per layer\" counts "
            "the picks.")
    if any(r["granularity"] == "mix4" and r["status"] == OK for r in rows):
        note += (" In the mix of 4, channel-wise is a candidate only for layers whose channels hold more than one "
                 "weight (not 1x1 convs), as the paper's 2.91x / 2.89x savings imply.")
    return "## Table II: mixed granularity, 4 bits\n\n" + table + note + "\n"


def beyond_section(rows: list[dict]) -> str:
    """Each method added beyond the paper against nearest rounding, on the same grid (so the same storage)."""
    body = []
    for method in ("pwlq", "affine"):
        near = find(rows, method, PAPER_BITS, "mix3")
        for r in rows:
            if (r["method"], r["bits"], r["granularity"]) != (method, PAPER_BITS, "mix3") or "rounding" not in r:
                continue
            if r["status"] != OK:
                body.append([METHOD_NAMES[method], r["rounding"], "yes" if r["bias_correction"] else "no", "failed"]
                            + [DASH] * 5)
                continue
            gain = None if near is None else 100.0 * (r["map50"] - near["map50"])
            body.append([METHOD_NAMES[method], r["rounding"], "yes" if r["bias_correction"] else "no",
                         fmt(r["map50"]), fmt(r["map50_95"]), fmt(r["map50_loss_pp"], ".2f"), fmt(gain, "+.2f"),
                         _x(r["saving_paper"]), _x(r["saving_storage"])])
    if not any(len(b) > 4 and b[1] != "nearest" or b[2] == "yes" for b in body):
        return ""
    head = ["method (4-bit mix3)", "rounding", "bias correction", "mAP@.5", "mAP@.5:.95", "loss (pp)",
            "vs nearest (pp)", "saving", "saving (storage)"]
    table = _table(head, ["---", "---", "---"] + ["---:"] * 6, body)
    return ("## Beyond the paper: same grid, better codes\n\n" + table +
            "\nGPTQ re-chooses each weight's code on the grid nearest rounding set up (column by column, with each "
            "conv's input second moment on calibration images, coco128); bias correction folds each conv's expected "
            "output shift into its bias or BN mean. Codes and per-group parameters keep the integer contract, so "
            "the hardware is the same. A mix picks, per layer, the candidate of least layer-output error under "
            "GPTQ (least weight MSE otherwise), so the storage may differ slightly from nearest's.\n")


def fig4_section(rows: list[dict], plot: str | None) -> str:
    pw, af = kbit_series(rows, "pwlq"), kbit_series(rows, "affine")
    if not pw:
        return ""
    by_k = {p["bits"]: p for p in af}
    body = [[str(p["bits"]), fmt(p["map50"]), fmt(p["loss"], ".2f"), _x(p["saving_paper"]), fmt(p["merit_paper"], ".2f"),
             _x(p["saving_storage"]), fmt(p["merit_storage"], ".2f"),
             fmt(by_k.get(p["bits"], {}).get("map50")), fmt(by_k.get(p["bits"], {}).get("merit_paper"), ".2f")]
            for p in pw]
    table = _table(["k", "PWLQ mAP@.5", "loss (pp)", "saving", "saving/(loss+1)", "saving (storage)",
                    "storage/(loss+1)", "uniform mAP@.5", "uniform saving/(loss+1)"],
                   ["---:"] * 9, body)
    top, top_s = peak(pw, "merit_paper"), peak(pw, "merit_storage")
    lo, hi = paper.fig4_peak_bits()
    text = (f"PWLQ (mix of 3) peaks at **k = {top['bits']}** by the paper's saving "
            f"and at **k = {top_s['bits']}** by storage saving (region bit counted); "
            f"the paper's YOLOv7 curve peaks at {lo}–{hi} bits.")
    return ("## Fig. 4: saving / (loss + 1) against k, mix of 3\n\n"
            "Loss is the drop of mAP@.5 below the baseline in percentage points (a gain counts as 0).\n\n"
            + (f"![Fig. 4]({plot})\n\n" if plot else "") + table + "\n" + text + "\n")


def equal_storage_section(rows: list[dict], plot: str | None) -> str:
    pairs = equal_storage_pairs(rows)
    if not pairs:
        return ""
    body = [[GRANULARITY_NAMES[q["granularity"]], str(q["bits"]), fmt(q["pwlq"]["map50"]), _x(q["pwlq"]["saving_storage"]),
             str(q["bits"] + 1), fmt(q["affine"]["map50"]), _x(q["affine"]["saving_storage"]),
             fmt(q["delta_map50_pp"], "+.2f")] for q in pairs]
    table = _table(["granularity", "PWLQ k", "PWLQ mAP@.5", "PWLQ storage saving", "uniform k+1", "uniform mAP@.5",
                    "uniform storage saving", "Δ mAP@.5 (pp, PWLQ − uniform)"], ["---", "---:"] + ["---:"] * 6, body)
    wins = sum(q["delta_map50_pp"] > 0 for q in pairs)
    gaps = [q["pwlq"]["saving_storage"] / q["affine"]["saving_storage"] - 1 for q in pairs]
    return ("## Equal storage: PWLQ at k bits against uniform at k+1 bits\n\n"
            "A comparison the paper does not make. PWLQ stores a region bit per weight beside its k-bit code, "
            "so by what is really stored it is a (k+1)-bit scheme; here it meets uniform quantization at k+1 bits "
            "at about the same storage saving.\n\n"
            + (f"![Equal storage]({plot})\n\n" if plot else "") + table +
            f"\nPWLQ scores higher in {wins} of {len(pairs)} pairs. Its storage saving is within "
            f"{100 * max(abs(g) for g in gaps):.0f}% of its partner's"
            + (" and a little smaller (PWLQ keeps a second scale per group for its tails, and a mix may pick other "
               "granularities for it), so the match slightly favours PWLQ" if all(g < 0 for g in gaps) else "") + ".\n")


def pareto_section(rows: list[dict], plot: str | None) -> str:
    front = pareto_front(rows)
    if not front:
        return ""
    names = ", ".join(f"`{r['key']}`" for r in front)
    return ("## mAP@.5 against memory saving\n\n" + (f"![Pareto]({plot})\n\n" if plot else "") +
            f"On the Pareto front (no configuration has both more saving and more mAP@.5): {names}.\n")


def layers_section(table: dict | None, plot: str | None) -> str:
    if not table:
        return ""
    head = ["method"] + [GRANULARITY_NAMES[g] for g in HEATMAP_GRANULARITIES]
    body = []
    for method, by_g in table["sqnr_db"].items():
        cells = []
        for g in HEATMAP_GRANULARITIES:
            vals = [v for v, fp16 in zip(by_g[g], table["fp16"][method][g]) if v is not None and not fp16]
            cells.append(fmt(sum(vals) / len(vals), ".1f") if vals else DASH)
        body.append([METHOD_NAMES[method]] + cells)
    return (f"## Per-layer weight error, {table['bits']} bits\n\n"
            "SQNR of each conv's weights (dB, higher is better) when the whole model is quantized at one "
            "granularity; no evaluation involved. Channel-wise 1x1 convs are left in FP16 and shown apart.\n\n"
            + (f"![Per-layer SQNR]({plot})\n\n" if plot else "") +
            "Mean over quantized layers (dB):\n\n" + _table(head, ["---"] + ["---:"] * 5, body))


def all_rows_section(rows: list[dict]) -> str:
    body = [[f"`{r['key']}`", r["status"], fmt(r["precision"]), fmt(r["recall"]), fmt(r["map50"]), fmt(r["map50_95"]),
             fmt(r["map50_loss_pp"], ".2f"), _x(r["saving_paper"]), _x(r["saving_storage"]), fmt(r["mse"], ".2e")]
            for r in rows]
    return "## Every configuration\n\n" + _table(
        ["key", "status", "P", "R", "mAP@.5", "mAP@.5:.95", "loss (pp)", "saving", "saving (storage)", "weight MSE"],
        ["---", "---"] + ["---:"] * 8, body)


def failures_section(rows: list[dict]) -> str:
    failed = [r for r in rows if r["status"] != OK]
    if not failed:
        return ""
    body = [[f"`{r['key']}`", r["status"], (r["error"] or DASH).replace("|", "\\|").replace("\n", " ")] for r in failed]
    return ("## Failed configurations\n\nA rerun of the same command retries these.\n\n"
            + _table(["key", "status", "error"], ["---", "---", "---"], body))


def read_previous(path: str | Path) -> list[dict]:
    """Rows of an earlier ``results.csv`` (numbers as floats), for :func:`changes_section`."""
    from ..errors import DataNotFoundError, SweepError

    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        raise DataNotFoundError(f"--previous: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SweepError(f"--previous {path}: not a readable results.csv ({type(e).__name__})") from None
    if not rows or "key" not in rows[0] or "map50" not in rows[0]:
        raise SweepError(f"--previous {path}: not a results.csv (no key and map50 columns)")

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    return [{**r, **{f: number(r.get(f)) for f in ("map50", "saving_paper", "mse")}} for r in rows]


def changes_section(rows: list[dict], previous: list[dict] | None) -> str:
    """What changed against an earlier results.csv: mAP@.5, saving and weight MSE per configuration."""
    if previous is None:
        return ""
    old = {r["key"]: r for r in previous}
    body = []
    for r in rows:
        before = old.get(r["key"])
        if r["status"] != OK or before is None or before.get("map50") is None:
            continue
        delta = r["map50"] - before["map50"]
        body.append([r["key"], fmt(before["map50"]), fmt(r["map50"]), f"{delta:+.3f}", _x(before["saving_paper"]),
                     _x(r["saving_paper"]), fmt(before["mse"], ".4g"), fmt(r["mse"], ".4g")])
    keys = {r["key"] for r in rows}
    new = sorted(keys - set(old))
    gone = sorted(set(old) - keys)
    text = ("## Changes since the previous results\n\nAgainst the `results.csv` these results replace "
            "(`--previous`), per configuration in both: mAP@.5, memory saving (paper's count) and weight MSE.\n\n")
    text += _table(["configuration", "mAP@.5 before", "mAP@.5 now", "change", "saving before", "saving now",
                    "MSE before", "MSE now"], ["---"] + ["---:"] * 7, body) if body else "No configuration in common.\n"
    if new:
        text += f"\nNew configurations: {', '.join(new)}.\n"
    if gone:
        text += f"\nNot in these results: {', '.join(gone)}.\n"
    return text


def header(settings: dict) -> str:
    ev = settings.get("eval", {})
    return (f"# Quantization sweep: `{settings['weights_name']}` on {settings['images']} COCO images\n\n"
            f"- **Model:** `{settings['weights_name']}` (sha256 `{settings['weights_sha256'][:12]}…`).\n"
            f"- **Images:** {settings['images']} images of the COCO root `{settings['coco_name']}` "
            f"(annotations `instances_val2017.json`).\n"
            f"- **Paper columns:** the published figures of *{paper.citation().split('(')[0].strip()}* "
            f"({paper.citation().split('(', 1)[1].rstrip(')')}), which are for **{paper.model()}**. Ours are for the model and "
            "images above, so only trends compare, not values. \"—\" marks a figure the paper does not publish.\n"
            f"- **Evaluation:** YOLOv7 test.py conventions ({ev.get('img_size', 640)} px, conf {ev.get('conf_thres', 0.001)}, "
            f"NMS IoU {ev.get('iou_thres', 0.65)}, at most {ev.get('max_det', 300)} detections); P and R at the "
            "maximum mean F1; mAP by pycocotools.\n"
            "- **Memory saving** is the FP16 size of all conv weights over what the quantized model stores. "
            "\"saving\" counts codes and per-group parameters, as the paper does; \"saving (storage)\" also counts "
            "PWLQ's region bit (one per weight). Uniform means the affine quantizer. Policy as in the paper: "
            "BN kept apart and unquantized, Detect convs quantized, channel-wise 1x1 convs left in FP16.\n")


def report_markdown(rows: list[dict], settings: dict, layer_table: dict | None = None,
                    plots: dict[str, str] | None = None, previous: list[dict] | None = None) -> str:
    plots = plots or {}
    sections = [header(settings), changes_section(rows, previous), baseline_section(rows), table1_section(rows),
                table2_section(rows),
                beyond_section(rows), fig4_section(rows, plots.get("fig4")), equal_storage_section(rows, plots.get("equal_storage")),
                pareto_section(rows, plots.get("pareto")), layers_section(layer_table, plots.get("layer_sqnr")),
                failures_section(rows), all_rows_section(rows)]
    return "\n".join(s for s in sections if s)


def write_outputs(root: str | Path, rows: list[dict], records: dict, settings: dict, layer_table: dict | None,
                  plots: dict[str, str], wall_seconds: float | None, previous: list[dict] | None = None) -> None:
    """results.csv, results.json and report.md under ``root`` (plots already written, named relative to it)."""
    root = Path(root)
    write_text(root / "results.csv", format_csv(rows))
    write_json(root / "results.json", results_json(rows, records, settings, wall_seconds))
    write_text(root / "report.md", report_markdown(rows, settings, layer_table, plots, previous))
