"""`dynconv report --study`: the original study's three tables, rebuilt from tagged MLflow runs.

Tag runs with ``run.tags.study=ROLE``: ``dynamic`` (the channel-adaptive ResNet18), ``plain`` (ResNet18),
``ran`` (the two-stage Residual Attention Network) and ``resnet34``. Runs sharing a role are seeds of one
configuration: every cell is mean ± std over them.
"""
from __future__ import annotations

import numpy as np

from dynconv.errors import DynconvError

ROLES = {"dynamic": "Resnet-18(DynamicConv2D)", "plain": "Resnet-18", "ran": "Residual Attention Network",
         "resnet34": "ResNet-34"}
METRICS = [("Accuracy", "accuracy"), ("Precision", "precision"), ("Recall", "recall"), ("F1 Score", "f1"),
           ("FLOPS (MACs)", "macs")]


def _cell(values: list[float], key: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    if key == "macs":
        return f"{int(np.mean(vals)):,}"
    text = f"{100 * np.mean(vals):.2f}%"
    return text + (f" ± {100 * np.std(vals):.2f}" if len(vals) > 1 else "")


def _runs_by_role(rows: list[dict]) -> dict[str, list[dict]]:
    by_role: dict[str, list[dict]] = {}
    for r in rows:
        role = r["tags"].get("study")
        if role in ROLES:
            by_role.setdefault(role, []).append(r)
    return by_role


def _table(columns: list[tuple[str, list[dict], str]]) -> str:
    """``columns``: (header, runs, subset) — one column per entry, one row per metric."""
    lines = ["| | " + " | ".join(h for h, _, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for label, key in METRICS:
        cells = [_cell([r["metrics"].get(s, {}).get(key) for r in runs], key) for _, runs, s in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    seeds = [str(len(runs)) for _, runs, _ in columns]
    lines.append("| runs (seeds) | " + " | ".join(seeds) + " |")
    return "\n".join(lines)


def study_report(rows: list[dict]) -> str:
    by_role = _runs_by_role(rows)
    if not by_role:
        raise DynconvError("no runs tagged for the study: train with run.tags.study=dynamic|plain|ran|resnet34")
    out = ["# The study's tables, reproduced", "",
           "Mean ± std over the runs (seeds) of each role; FLOPS are MACs from PyTorch's counter.", ""]
    dyn = by_role.get("dynamic", [])
    out += ["## Table 1 — Resnet-18(DynamicConv2D) per input-channel subset", ""]
    if dyn:
        subsets = list(dyn[0]["acc"])
        out.append(_table([(s, dyn, s) for s in subsets]))
    else:
        out.append("_no runs tagged study=dynamic_")
    out += ["", "## Table 2 — Resnet-18(DynamicConv2D) vs Resnet-18 (all channels)", ""]
    out.append(_pair(by_role, "dynamic", "plain"))
    out += ["", "## Table 3 — Residual Attention Network vs ResNet-34 (all channels)", ""]
    out.append(_pair(by_role, "ran", "resnet34"))
    return "\n".join(out) + "\n"


def _pair(by_role: dict, a: str, b: str) -> str:
    present = [(ROLES[r], by_role[r], by_role[r][0]["full"]) for r in (a, b) if r in by_role]
    missing = [r for r in (a, b) if r not in by_role]
    text = _table(present) if present else ""
    if missing:
        text += ("\n\n" if text else "") + "_no runs tagged " + ", ".join(f"study={m}" for m in missing) + "_"
    return text
