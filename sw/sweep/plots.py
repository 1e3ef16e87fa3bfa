"""The sweep's PNG plots (matplotlib, Agg: no display needed). Each function returns whether it drew one;
a plot whose data the sweep's preset does not produce is skipped.

- ``fig4.png``: the paper's Fig. 4, saving / (loss + 1) against k for PWLQ mix of 3, beside mAP@.5 against k;
- ``equal_storage.png``: PWLQ at k bits and uniform at k+1 bits on mAP@.5 against storage saving;
- ``pareto.png``: every configuration on mAP@.5 against memory saving, the Pareto front marked;
- ``layer_sqnr.png``: per-layer weight SQNR, layers x granularities, one panel per method.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never look for a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from . import paper  # noqa: E402
from .analysis import equal_storage_pairs, find, kbit_series, pareto_front, peak  # noqa: E402
from .report import GRANULARITY_NAMES, METHOD_NAMES  # noqa: E402

DPI = 110
COLORS = {"pwlq": "tab:orange", "affine": "tab:blue", "baseline": "black"}
MARKERS = {"filter": "o", "fshape": "s", "cshape": "D", "channel": "v", "mix3": "^", "mix4": "P", None: "*"}


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _baseline_map50(rows) -> float | None:
    r = find(rows, "baseline", None, None)
    return r["map50"] if r else None


def plot_fig4(rows: list[dict], path: Path) -> bool:
    pw, af = kbit_series(rows, "pwlq"), kbit_series(rows, "affine")
    if not pw:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lo, hi = paper.fig4_peak_bits()
    ax.axvspan(lo - 0.3, hi + 0.3, color="0.92", zorder=0, label=f"paper's peak, YOLOv7 ({lo}–{hi} bits)")
    k = [p["bits"] for p in pw]
    ax.plot(k, [p["merit_paper"] for p in pw], "-o", color=COLORS["pwlq"], label="PWLQ, saving as the paper counts")
    ax.plot(k, [p["merit_storage"] for p in pw], "--s", color=COLORS["pwlq"], alpha=0.7,
            label="PWLQ, storage saving (region bit counted)")
    if af:
        ax.plot([p["bits"] for p in af], [p["merit_paper"] for p in af], ":^", color=COLORS["affine"],
                label="uniform (affine)")
    for field in ("merit_paper", "merit_storage"):
        top = peak(pw, field)
        ax.plot(top["bits"], top[field], "*", color="crimson", markersize=16, zorder=5)
        ax.annotate(f"peak k={top['bits']}", (top["bits"], top[field]), textcoords="offset points",
                    xytext=(10, -4), color="crimson", fontsize=9)
    ax.set_xlabel("bits k")
    ax.set_ylabel("saving / (loss + 1)")
    ax.set_title("Fig. 4: memory saving per point of mAP@.5 lost (mix of 3)")
    ax.set_xticks(k)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)  # below: never over a curve

    ax2.plot(k, [p["map50"] for p in pw], "-o", color=COLORS["pwlq"], label="PWLQ")
    if af:
        ax2.plot([p["bits"] for p in af], [p["map50"] for p in af], ":^", color=COLORS["affine"], label="uniform (affine)")
    base = _baseline_map50(rows)
    if base is not None:
        ax2.axhline(base, color="black", lw=1, ls="--", label=f"baseline {base:.3f}")
    ax2.set_xlabel("bits k")
    ax2.set_ylabel("mAP@.5")
    ax2.set_title("mAP@.5 against k (mix of 3)")
    ax2.set_xticks(k)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_equal_storage(rows: list[dict], path: Path) -> bool:
    pairs = [q for q in equal_storage_pairs(rows) if q["granularity"] == "mix3"] or equal_storage_pairs(rows)
    if not pairs:
        return False
    granularity = GRANULARITY_NAMES[pairs[0]["granularity"]]
    pairs = [q for q in pairs if GRANULARITY_NAMES[q["granularity"]] == granularity]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    for q in pairs:
        ax.plot([q["pwlq"]["saving_storage"], q["affine"]["saving_storage"]],
                [q["pwlq"]["map50"], q["affine"]["map50"]], color="0.75", lw=1, zorder=1)
    for method, k_of, style, dy in (("pwlq", lambda q: q["bits"], "-o", 5), ("affine", lambda q: q["bits"] + 1, ":^", -12)):
        xs = [q[method]["saving_storage"] for q in pairs]
        ys = [q[method]["map50"] for q in pairs]
        name = "PWLQ at k bits" if method == "pwlq" else "uniform (affine) at k+1 bits"
        ax.plot(xs, ys, style, color=COLORS[method], label=name, zorder=2)
        for q, x, y in zip(pairs, xs, ys):
            ax.annotate(f"{k_of(q)}b", (x, y), textcoords="offset points", xytext=(5, dy), fontsize=8,
                        color=COLORS[method])
    base = _baseline_map50(rows)
    if base is not None:
        ax.axhline(base, color="black", lw=1, ls="--", label=f"baseline {base:.3f}")
    ax.set_xlabel("storage saving against FP16 (×, PWLQ's region bit counted)")
    ax.set_ylabel("mAP@.5")
    ax.set_title(f"mAP@.5 against storage saving ({granularity}; grey lines join pairs)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3)

    deltas = [q["delta_map50_pp"] for q in pairs]
    labels = [f"{q['bits']} vs {q['bits'] + 1}" for q in pairs]
    bars = bx.bar(labels, deltas, color=[COLORS["pwlq"] if d > 0 else COLORS["affine"] for d in deltas])
    bx.bar_label(bars, labels=[f"{d:+.2f}" for d in deltas], fontsize=8, padding=2)
    bx.axhline(0, color="black", lw=0.8)
    bx.set_xlabel("bits: PWLQ k vs uniform k+1")
    bx.set_ylabel("Δ mAP@.5, PWLQ − uniform (points)")
    bx.set_title("Who wins at equal storage (orange: PWLQ, blue: uniform)", fontsize=10)
    bx.margins(y=0.15)
    bx.grid(alpha=0.3, axis="y")
    fig.suptitle("Equal storage: PWLQ at k bits against uniform at k+1 bits", fontsize=11)
    fig.tight_layout()
    _save(fig, path)
    return True


def _short_label(r: dict) -> str:
    if r["method"] == "baseline":
        return "baseline"
    extra = ("" if r.get("rounding", "nearest") == "nearest" else f" {r['rounding']}") \
        + (" +bc" if r.get("bias_correction") else "")
    return f"{'PWLQ' if r['method'] == 'pwlq' else 'uniform'} {r['bits']}b {GRANULARITY_NAMES[r['granularity']]}{extra}"


def plot_pareto(rows: list[dict], path: Path) -> bool:
    points = [r for r in rows if r["status"] == "ok"]
    if len(points) < 2:
        return False
    front = pareto_front(rows)
    front_keys = {r["key"] for r in front}
    fig, ax = plt.subplots(figsize=(11, 5.6))
    ax.step([r["saving_paper"] for r in front], [r["map50"] for r in front], where="post", color="crimson",
            lw=1.2, alpha=0.5, zorder=1)
    for r in points:
        on_front = r["key"] in front_keys
        ax.scatter(r["saving_paper"], r["map50"], color=COLORS.get(r["method"], "grey"),
                   marker=MARKERS.get(r["granularity"], "x"), s=90 if r["method"] == "baseline" else 45,
                   edgecolors="crimson" if on_front else "none", linewidths=1.6, zorder=3)
    # Front points are numbered (alternately above and below, as neighbours crowd) and named in a key beside
    # the axes: names written on the plot would overlap where many configurations score alike.
    key_lines = []
    for i, r in enumerate(front, 1):
        ax.annotate(str(i), (r["saving_paper"], r["map50"]), textcoords="offset points",
                    xytext=(4, 6 if i % 2 else -13), fontsize=8, color="crimson", fontweight="bold")
        key_lines.append(f"{i:>2}  {_short_label(r)}: {r['saving_paper']:.2f}×, {r['map50']:.3f}")
    ax.text(1.02, 1.0, "Pareto front\n(saving, mAP@.5)\n\n" + "\n".join(key_lines), transform=ax.transAxes,
            va="top", ha="left", fontsize=8, family="monospace")
    from matplotlib.lines import Line2D

    methods = sorted({r["method"] for r in points}, key=list(COLORS).index)
    handles = [Line2D([], [], ls="", marker="o", color=COLORS[m], label=METHOD_NAMES[m]) for m in methods if m != "baseline"]
    grans = [g for g in MARKERS if g is not None and any(r["granularity"] == g for r in points)]
    handles += [Line2D([], [], ls="", marker=MARKERS[g], color="0.4", label=GRANULARITY_NAMES[g]) for g in grans]
    handles += [Line2D([], [], ls="", marker="*", color="black", markersize=10, label="baseline"),
                Line2D([], [], color="crimson", alpha=0.5, label="Pareto front (outlined, numbered)")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=5)
    ax.set_xlabel("memory saving against FP16 (×, as the paper counts)")
    ax.set_ylabel("mAP@.5")
    ax.set_title("mAP@.5 against memory saving, every configuration (colour: method, marker: granularity)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_layer_sqnr(table: dict | None, path: Path) -> bool:
    if not table or not table.get("layers"):
        return False
    methods = list(table["sqnr_db"])
    grans = table["granularities"]
    layers = table["layers"]
    grids = {}
    for m in methods:
        values = np.array([[np.nan if v is None else v for v in table["sqnr_db"][m][g]] for g in grans]).T
        fp16 = np.array([table["fp16"][m][g] for g in grans]).T
        grids[m] = (np.ma.masked_where(fp16 | np.isnan(values), values), fp16)
    finite = np.concatenate([g.compressed() for g, _ in grids.values()])
    vmin, vmax = np.floor(finite.min()), np.ceil(finite.max())
    height = 1.6 + 0.19 * len(layers)
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 + 3.0 * len(methods), height), sharey=True)
    axes = np.atleast_1d(axes)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")  # bad = masked = FP16 cells
    for ax, m in zip(axes, methods):
        grid, fp16 = grids[m]
        im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        for (i, j), v in np.ndenumerate(grid.filled(np.nan)):
            text = "FP16" if fp16[i, j] else ("" if np.isnan(v) else f"{v:.0f}")
            shade = "black" if fp16[i, j] or v > (vmin + vmax) / 2 else "white"
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color=shade)
        ax.set_xticks(range(len(grans)))
        ax.set_xticklabels([GRANULARITY_NAMES[g] for g in grans], rotation=30, ha="right", fontsize=8)
        ax.xaxis.set_ticks_position("both")
        ax.tick_params(axis="x", labeltop=True, labelbottom=True)
        ax.set_title(f"{METHOD_NAMES[m]}, {table['bits']} bits", fontsize=10, pad=24)
    axes[0].set_yticks(range(len(layers)))
    shapes = table.get("shapes") or [None] * len(layers)
    axes[0].set_yticklabels([f"{n}  {s[2]}x{s[3]}" if s else n for n, s in zip(layers, shapes)], fontsize=7)
    cbar = fig.colorbar(im, ax=list(axes), fraction=0.04, pad=0.02, aspect=40)
    cbar.set_label("weight SQNR (dB), higher is better")
    fig.suptitle("Per-layer weight SQNR by granularity (layer names with kernel size; "
                 "grey: channel-wise 1x1 conv left in FP16)", fontsize=10)
    _save(fig, path)
    return True


def write_plots(root: str | Path, rows: list[dict], layer_table: dict | None) -> dict[str, str]:
    """Draw every plot the sweep has data for under ``root``; returns {plot name: file name}."""
    root = Path(root)
    drawn = {}
    for name, draw in (("fig4", lambda p: plot_fig4(rows, p)),
                       ("equal_storage", lambda p: plot_equal_storage(rows, p)),
                       ("pareto", lambda p: plot_pareto(rows, p)),
                       ("layer_sqnr", lambda p: plot_layer_sqnr(layer_table, p))):
        path = root / f"{name}.png"
        if draw(path):
            drawn[name] = path.name
    return drawn
