"""Shared matplotlib figures: per-subset accuracy bars, accuracy vs MACs, learning curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def subset_figure(rows: list[dict], path: Path, curves: dict[str, list[tuple[int, float]]] | None = None,
                  title: str = "") -> dict:
    """``rows``: ``{"label", "accuracy": {subset: acc}, "std": {subset: sd} (optional), "macs": {subset: n}}``.

    Panels, all in percent: accuracy per subset grouped by row (values written on the bars when there are
    few rows); accuracy vs MACs (one marker per row and subset, labelled by subset); and, when ``curves``
    (label -> [(epoch, accuracy)]) is given, learning curves. Written atomically; the format follows the
    suffix (.png, .svg, .pdf). Returns ``{"path", "series": {panel: number of series}}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = list(rows[0]["accuracy"])
    n_panels = 3 if curves else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(7 * n_panels, 5), dpi=110,
                             gridspec_kw={"width_ratios": [3, 2] + ([2] if curves else [])})
    bars, scatter = axes[0], axes[1]
    width = 0.8 / len(rows)
    colours = plt.get_cmap("tab10" if len(rows) <= 10 else "tab20")
    for j, r in enumerate(rows):
        xs = np.arange(len(subsets)) + (j - (len(rows) - 1) / 2) * width
        y = [100 * r["accuracy"][s] for s in subsets]
        e = [100 * r.get("std", {}).get(s, 0.0) for s in subsets]
        drawn = bars.bar(xs, y, width, yerr=e if any(e) else None, capsize=2, label=r["label"], color=colours(j))
        if len(rows) <= 3:
            bars.bar_label(drawn, labels=[f"{v:.0f}" for v in y], fontsize=7, padding=2)
        macs = [r["macs"][s] / 1e6 for s in subsets]
        scatter.errorbar(macs, y, yerr=e if any(e) else None, marker="o", linestyle="", capsize=2, color=colours(j),
                         alpha=0.8, label=r["label"])
        if len(rows) <= 4:
            for s, mx, my in zip(subsets, macs, y):
                scatter.annotate(s, (mx, my), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colours(j))
    bars.set_xticks(np.arange(len(subsets)), subsets)
    bars.set_ylabel("accuracy (%)")
    bars.set_title("Accuracy per channel subset")
    bars.set_ylim(0, 105)
    bars.grid(axis="y", alpha=0.3)
    bars.legend(fontsize=8, ncol=2 if len(rows) > 6 else 1, loc="upper center", bbox_to_anchor=(0.5, -0.08),
                frameon=False)
    scatter.set_xlabel("MACs per image (millions)")
    scatter.set_ylabel("accuracy (%)")
    scatter.set_title("Accuracy vs compute (one marker per run and subset)")
    scatter.grid(alpha=0.3)
    if curves:
        ax = axes[2]
        for j, r in enumerate(rows):
            points = curves.get(r["label"], [])
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, [100 * v for v in values], marker=".", color=colours(j), label=r["label"])
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy, all channels (%)")
        ax.set_ylim(0, 105)
        ax.set_title("Learning curves")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    series = {"bars": len(bars.containers), "scatter": len(scatter.containers),
              "curves": len(axes[2].get_lines()) if curves else 0}
    tmp.replace(path)
    return {"path": path, "series": series}
