"""A matrix of training runs — cells (a label and config overrides) × seeds — trained one after the other
with the normal trainer, reused when already finished, tracked under one MLflow parent run, and
aggregated per cell: accuracy per channel subset (mean ± std over seeds), mean and worst subset, MACs,
and the gap to a reference cell's RGB accuracy. ``dynconv ablate`` and ``dynconv recipes`` are matrices."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dynconv.errors import DynconvError
from dynconv.run_files import EVAL_JSON, MODEL

from .config import load_config
from .plots import subset_figure
from .tracking import MlflowRun, default_tracking_uri
from .training import run_training


@dataclass(frozen=True)
class Cell:
    label: str                      # the row, e.g. "slice / recalibrate"
    overrides: tuple[str, ...]      # dotted.key=value
    group: str = ""                 # rows of one group are compared with each other (e.g. a data set)
    reference: bool = False         # the RGB-only reference of its group: rgb_gap = its RGB - each row's
    specialist: str = ""            # a per-subset specialist: the subset it is trained and scored on

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{self.group}-{self.label}" if self.group else self.label).strip("-")


def cell_run_dir(out: Path, cell: Cell, seed: int) -> Path:
    """Where the run of ``cell`` with ``seed`` trains (and is found again when the matrix is re-run)."""
    return out / "runs" / f"{cell.slug}-seed{seed}"


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` completed: its final evaluation and model are written."""
    return (run_dir / EVAL_JSON).exists() and (run_dir / MODEL).exists()


def run_matrix(config: str | Path, overrides: list[str], out: Path, cells: list[Cell], seeds: int, kind: str,
               params: dict | None = None, log: Callable[[str], None] = print) -> tuple[list[dict], MlflowRun | None]:
    """Train every cell with seeds 0..seeds-1 (``train.resume=auto``: an interrupted matrix continues,
    finished runs are reused); returns the aggregated rows and the MLflow parent run (or None)."""
    base = load_config(config, overrides)
    uri = base.tracking.uri or default_tracking_uri(out / "runs" / "x")
    parent = MlflowRun(uri, base.tracking.experiment, out, kind, params={**(params or {}), "seeds": seeds},
                       tags={"dynconv.kind": kind}, resume=True, wait_s=base.tracking.wait_s) if base.tracking.enabled else None
    reports: dict[Cell, list[dict]] = {}
    total = len(cells) * seeds
    for i, (cell, seed) in enumerate(((c, s) for c in cells for s in range(seeds)), 1):
        run_dir = cell_run_dir(out, cell, seed)
        done = run_dir / EVAL_JSON
        if finished(run_dir):
            log(f"[{i}/{total}] {cell.group + ': ' if cell.group else ''}{cell.label} seed {seed}: already done, "
                f"reusing {done}")
            reports.setdefault(cell, []).append(json.loads(done.read_text()))
            continue
        log(f"[{i}/{total}] {cell.group + ': ' if cell.group else ''}{cell.label} seed {seed}")
        fixed = [f"train.seed={seed}", f"run.dir={run_dir}", f"run.name={kind}-{cell.slug}-seed{seed}",
                 "train.resume=auto", f"tracking.uri={uri}"]
        cell_overrides = [_resolve(o, cell, cells, out, seed) for o in cell.overrides]
        cfg = load_config(config, [*overrides, *cell_overrides, *fixed])
        tags = {f"dynconv.{kind}": cell.label, **({f"dynconv.{kind}.group": cell.group} if cell.group else {})}
        if parent:
            tags["mlflow.parentRunId"] = parent.run_id
        reports.setdefault(cell, []).append(run_training(cfg, tags=tags)["report"])
    return aggregate(reports), parent


def _resolve(override: str, cell: Cell, cells: list[Cell], out: Path, seed: int) -> str:
    """``key=@LABEL``: the final checkpoint of the cell ``LABEL`` of the same group and seed (trained before
    this one), e.g. a distillation teacher; ``key=@GROUP::LABEL``: of another group (e.g. a model pretrained
    on a larger data set)."""
    key, _, value = override.partition("=")
    if not value.startswith("@"):
        return override
    group, _, label = value[1:].rpartition("::") if "::" in value else (cell.group, "", value[1:])
    other = next((c for c in cells if c.label == label and c.group == group), None)
    if other is None or cells.index(other) >= cells.index(cell):
        raise DynconvError(f"{cell.label}: {key}={value} names no cell listed before it (cells: "
                           f"{', '.join(c.label for c in cells if c.group == group) or 'none in ' + repr(group)})")
    return f"{key}={cell_run_dir(out, other, seed) / MODEL}"


def aggregate(reports: dict[Cell, list[dict]]) -> list[dict]:
    """One row per cell: per-subset accuracy mean, std and 95 % interval over seeds (and each seed's), per-subset
    MACs, mean and worst subset, training compute, and ``rgb_gap`` (points of RGB accuracy below the group's
    reference) where the group has one."""
    rows = []
    for cell, runs in reports.items():
        subsets = list(runs[0]["subsets"])
        acc = np.array([[r["subsets"][s]["accuracy"] for s in subsets] for r in runs])
        compute = [r.get("training", {}).get("train_macs") for r in runs]
        seconds = [r.get("training", {}).get("train_seconds", 0) / max(1, r.get("training", {}).get("epochs", 1))
                   for r in runs]
        rows.append({"variant": cell.label, "group": cell.group, "reference": cell.reference, "seeds": len(runs),
                     "specialist": cell.specialist,
                     "accuracy_mean": dict(zip(subsets, acc.mean(0).round(6).tolist())),
                     "accuracy_std": dict(zip(subsets, acc.std(0).round(6).tolist())),
                     "accuracy_ci": dict(zip(subsets, [interval(acc[:, i]) for i in range(len(subsets))])),
                     "accuracy_runs": dict(zip(subsets, acc.T.round(6).tolist())),
                     "macs": {s: runs[0]["subsets"][s]["macs"] for s in subsets},
                     "train_macs": float(np.mean(compute)) if None not in compute else None,
                     "epoch_seconds": float(np.mean(seconds)) if all(seconds) else None,
                     "scores": {k: float(np.mean([r["subsets"][subsets[0]].get(k, np.nan) for r in runs]))
                                for k in ("accuracy", "precision", "recall", "f1")},  # of the full input
                     "mean_subset_acc": float(acc.mean()), "worst_subset_acc": float(acc.mean(0).min()),
                     "mean_subset_acc_std": float(acc.mean(1).std())})
    return with_gaps(rows)


def interval(values) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student's t; 0 for one value)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=float)
    return 0.0 if v.size < 2 else round(float(t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)), 6)


def with_gaps(rows: list[dict]) -> list[dict]:
    """``rgb_gap`` on every row of a group with a reference row: its full-input accuracy minus the row's."""
    for row in rows:
        ref = next((r for r in rows if r["reference"] and r["group"] == row["group"]), None)
        if ref is not None:
            full = next(iter(ref["accuracy_mean"]))
            row["rgb_gap"] = ref["accuracy_mean"][full] - row["accuracy_mean"][full]
    return rows


def markdown(rows: list[dict], gap: bool = False, spread: str = "std") -> str:
    """The accuracy table (%): one row per cell, one column per subset (mean ± ``spread``: ``std`` over seeds or
    ``ci``, the 95 % interval), then mean, worst (and rgb_gap), MACs, and training compute where recorded."""
    subsets = list(rows[0]["accuracy_mean"])
    compute = any(r.get("train_macs") for r in rows)
    head = "| variant | seeds | " + " | ".join(subsets) + " | mean | worst |" + (" rgb_gap |" if gap else "") \
        + " MACs (all channels) |" + (" training compute |" if compute else "")
    lines = [head, "|---|---:|" + "---:|" * (len(subsets) + 3 + gap + compute)]
    for r in rows:
        pm = r["accuracy_ci" if spread == "ci" else "accuracy_std"]
        cells = [f"{100 * r['accuracy_mean'][s]:.1f} ± {100 * pm[s]:.1f}" for s in subsets]
        extra = f" {100 * r['rgb_gap']:+.1f} |" if gap and "rgb_gap" in r else " – |" if gap else ""
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells)
                     + f" | {100 * r['mean_subset_acc']:.1f} | {100 * r['worst_subset_acc']:.1f} |" + extra
                     + f" {r['macs'][subsets[0]]:,} |" + (f" {tmacs(r.get('train_macs'))} |" if compute else ""))
    return "\n".join(lines) + "\n"


def tmacs(value: float | None) -> str:
    """Training compute as forward tera-MACs (``–`` when not recorded)."""
    return "–" if not value else f"{value / 1e12:,.1f} TMACs"


def plot(rows: list[dict], path: Path, title: str = "") -> Path:
    """Per-subset accuracy bars (error bars = std over seeds) and accuracy vs MACs."""
    rows = [{"label": r["variant"], "accuracy": r["accuracy_mean"], "std": r["accuracy_std"], "macs": r["macs"]}
            for r in rows]
    return subset_figure(rows, path, title=title)["path"]


def log_to_parent(parent: MlflowRun | None, files: list[Path], rows: list[dict]) -> None:
    if parent is None:
        return
    for f in files:
        parent.log_artifact(f)
    parent.log_metrics({re.sub(r"[^A-Za-z0-9_.-]+", "_", f"mean_subset_acc_{r['group']}_{r['variant']}"):
                        r["mean_subset_acc"] for r in rows})
    parent.finish()
