"""Per-subset result tables (terminal, Markdown) and the evaluation JSON/Markdown files."""
from __future__ import annotations

import json
from pathlib import Path

from dynconv.fileio import atomic_write_text

ROWS = [("Accuracy", "accuracy"), ("Precision", "precision"), ("Recall", "recall"), ("F1 Score", "f1"),
        ("F1 macro", "f1_macro"), ("MACs", "macs")]


def _cell(key: str, value: float, compact: bool = False) -> str:
    if key == "macs":
        return f"{value / 1e6:,.1f}M" if compact else f"{int(value):,}"
    return f"{100 * value:.2f}%"


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """The study's Table 1 layout: one column per channel subset, one row per metric."""
    subsets = list(results)
    lines = ["| | " + " | ".join(subsets) + " |", "|---|" + "---:|" * len(subsets)]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(_cell(key, results[s][key]) for s in subsets) + " |")
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, dict[str, float]], title: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("metric", no_wrap=True)
    for s in results:
        table.add_column(s, justify="right", no_wrap=True)
    for label, key in ROWS:
        table.add_row(label, *(_cell(key, results[s][key], compact=True) for s in results))
    Console().print(table)


def write_reports(report: dict, json_path: Path, md_path: Path | None = None) -> list[Path]:
    """``report`` = {"model", "image_size", "subsets": {...}, ...}; written atomically."""
    files = [atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")]
    if md_path is not None:
        head = f"# {report['model']} at {report['image_size']}×{report['image_size']}\n\n"
        datasets = report.get("datasets")  # a mixture: a table per dataset, on the subsets of its channels
        body = "\n".join(f"## {name} ({d['channels']}, {d['num_samples']} images)\n\n" + markdown_table(d["subsets"])
                         for name, d in datasets.items()) if datasets else markdown_table(report["subsets"])
        files.append(atomic_write_text(md_path, head + body))
    return files
