"""Human-readable summaries of quantization reports."""

from __future__ import annotations

from collections import Counter


def summary_table(report: dict) -> str:
    """Markdown: the spec, the chosen granularities, and the totals (MSE and both memory savings)."""
    s, t = report["spec"], report["totals"]
    chosen = Counter(row["granularity"] for row in report["layers"])
    budget = s.get("budget_bits")
    width = f"budget {budget:g} bits/weight" if budget is not None else f"{s['bits']}-bit"
    extras = [x for x, on in ((f"{s.get('rounding')} rounding", s.get("rounding", "nearest") != "nearest"),
                              ("bias correction", s.get("bias_correction"))) if on]
    lines = [f"{s['method']} {width} {s['granularity']}{''.join(', ' + x for x in extras)} "
             f"({len(report['layers'])} convs; "
             + ", ".join(f"{g} {n}" for g, n in chosen.most_common()) + ")",
             "",
             "| weights | MSE | saving_paper | saving_storage | stored bits | FP16 bits |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {t['weights']:,} | {t['mse']:.3e} | {t['saving_paper']:.3f}x | {t['saving_storage']:.3f}x | "
             f"{t['storage_bits']:,} | {t['baseline_bits']:,} |", ""]
    if budget is not None:
        lines += ["| layer | shape | bits | granularity | stored bits/weight |", "|---|---|---:|---|---:|"]
        lines += [f"| {r['name']} | {'x'.join(map(str, r['shape']))} | {r['bits']} | {r['granularity']} | "
                  f"{r['storage_bits'] / r['weights']:.3f} |" for r in report["layers"]]
        lines.append("")
    return "\n".join(lines)
