"""Human-readable summaries of quantization reports."""

from __future__ import annotations

from collections import Counter


def summary_table(report: dict) -> str:
    """Markdown: the spec, the chosen granularities, and the totals (MSE and both memory savings)."""
    s, t = report["spec"], report["totals"]
    chosen = Counter(row["granularity"] for row in report["layers"])
    lines = [f"{s['method']} {s['bits']}-bit {s['granularity']} ({len(report['layers'])} convs; "
             + ", ".join(f"{g} {n}" for g, n in chosen.most_common()) + ")",
             "",
             "| weights | MSE | saving_paper | saving_storage | stored bits | FP16 bits |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {t['weights']:,} | {t['mse']:.3e} | {t['saving_paper']:.3f}x | {t['saving_storage']:.3f}x | "
             f"{t['storage_bits']:,} | {t['baseline_bits']:,} |", ""]
    return "\n".join(lines)
