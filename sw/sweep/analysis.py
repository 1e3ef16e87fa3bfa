"""Derived figures of a sweep, shared by the report and the plots: flat rows, loss, the Fig. 4 ratio,
equal-storage pairs and the Pareto front.

Loss is in percentage points of mAP@.5 below the baseline. The Fig. 4 figure of merit is
``saving / (loss + 1)``; a configuration that scores above the baseline (possible on a small image set)
counts as loss 0, so the ratio never exceeds the saving and never divides by zero or less.
"""

from __future__ import annotations

from .plan import Config
from .store import METRICS, OK, QUANT


def loss_pp(map50: float | None, baseline_map50: float | None) -> float | None:
    """mAP@.5 lost to quantization, in percentage points (negative when the configuration scores higher)."""
    if map50 is None or baseline_map50 is None:
        return None
    return 100.0 * (baseline_map50 - map50)


def merit(saving: float | None, loss: float | None) -> float | None:
    """The paper's Fig. 4 figure of merit, saving / (loss + 1), with a gain counted as no loss."""
    if saving is None or loss is None:
        return None
    return saving / (max(loss, 0.0) + 1.0)


def flat_row(config: Config, record: dict | None, baseline_map50: float | None) -> dict:
    """One configuration as a flat row; metrics are None unless its status is ok."""
    row = {**config.as_dict(), "status": record["status"] if record else "missing"}
    ok = bool(record) and record["status"] == OK
    for k in METRICS:
        row[k] = record["metrics"][k] if ok else None
    row["map50_loss_pp"] = loss_pp(row["map50"], baseline_map50)
    for k in QUANT:
        row[k] = record["quant"][k] if ok else None
    row["granularity_counts"] = record["quant"].get("granularity_counts", {}) if ok else {}
    row["error"] = record.get("error", "") if record and not ok else ""
    return row


def flat_rows(configs: list[Config], records: dict[str, dict | None]) -> list[dict]:
    """Rows in plan order; the loss of each is measured against the plan's baseline."""
    base = records.get("baseline")
    base_map50 = base["metrics"]["map50"] if base and base["status"] == OK else None
    return [flat_row(c, records.get(c.key), base_map50) for c in configs]


def find(rows: list[dict], method: str, bits: int | None, granularity: str | None) -> dict | None:
    """The ok row of one configuration of the paper (nearest rounding, no bias correction), or None."""
    for r in rows:
        if (r["method"], r["bits"], r["granularity"]) == (method, bits, granularity) and r["status"] == OK \
                and is_paper(r):
            return r
    return None


def is_paper(row: dict) -> bool:
    """Whether a row is one of the paper's configurations (nearest rounding, no bias correction)."""
    return row.get("rounding", "nearest") == "nearest" and not row.get("bias_correction")


def kbit_series(rows: list[dict], method: str, granularity: str = "mix3") -> list[dict]:
    """Fig. 4 data: one point per k (ok rows only), with the ratio for both saving figures."""
    points = sorted((r for r in rows if r["method"] == method and r["granularity"] == granularity
                     and r["status"] == OK and is_paper(r)), key=lambda r: r["bits"])
    return [{"bits": r["bits"], "map50": r["map50"], "loss": r["map50_loss_pp"],
             "saving_paper": r["saving_paper"], "saving_storage": r["saving_storage"],
             "merit_paper": merit(r["saving_paper"], r["map50_loss_pp"]),
             "merit_storage": merit(r["saving_storage"], r["map50_loss_pp"])} for r in points]


def peak(series: list[dict], field: str) -> dict | None:
    """The point of ``series`` with the highest ``field`` (the lowest k among equals)."""
    usable = [p for p in series if p[field] is not None]
    return max(usable, key=lambda p: (p[field], -p["bits"])) if usable else None


def equal_storage_pairs(rows: list[dict]) -> list[dict]:
    """PWLQ at k bits beside affine at k+1 bits, same granularity: PWLQ stores k code bits plus a region
    bit per weight, so both store about k+1 bits per weight (compare their ``saving_storage``)."""
    pairs = []
    for p in rows:
        if p["method"] != "pwlq" or p["status"] != OK or not is_paper(p):
            continue
        a = find(rows, "affine", p["bits"] + 1, p["granularity"])
        if a is not None:
            pairs.append({"granularity": p["granularity"], "bits": p["bits"], "pwlq": p, "affine": a,
                          "delta_map50_pp": 100.0 * (p["map50"] - a["map50"])})
    return sorted(pairs, key=lambda q: (q["granularity"], q["bits"]))


def pareto_front(rows: list[dict], x: str = "saving_paper", y: str = "map50") -> list[dict]:
    """Ok rows that no other row beats on both ``x`` and ``y`` (higher is better), by ascending ``x``."""
    points = [r for r in rows if r["status"] == OK and r[x] is not None and r[y] is not None]
    front = [r for r in points
             if not any(o[x] >= r[x] and o[y] >= r[y] and (o[x] > r[x] or o[y] > r[y]) for o in points)]
    return sorted(front, key=lambda r: (r[x], r[y]))
