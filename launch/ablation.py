"""`dynconv ablate`: plain vs every channel-adaptive stem mode × stem preset, over several seeds.

The study's dynamic ResNet18 changed two things at once (a channel-adaptive first conv *and* a stride-1
stem), so its gain over the plain model mixes two effects. This trains the matrix — the plain model (RGB
only: the reference) and every stem mode × norm mode, per stem preset — with identical data, epochs and
seeds, and reports per-subset accuracy (mean ± std over seeds) against MACs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynconv.fileio import atomic_write_text
from dynconv.layers import NORM_MODES, STEM_MODES, STEM_PRESETS

from .config import load_config
from .plots import subset_figure
from .tracking import MlflowTracker, default_tracking_uri
from .training import run_training


@dataclass(frozen=True)
class Variant:
    model: str
    stem_mode: str | None  # None: the plain model, trained on RGB only — the RGB-only reference
    stem: str
    norm: str = "shared"

    @property
    def label(self) -> str:
        return f"{self.stem_mode or 'plain'}/{self.stem}/{self.norm}"


def variants(model: str, modes: list[str], presets: list[str], norms: list[str] = ("shared",)) -> list[Variant]:
    plain = model.removeprefix("dynamic_")
    return [v for preset in presets
            for v in [Variant(plain, None, preset)]
            + [Variant(f"dynamic_{plain}", m, preset, n) for m in modes for n in norms]]


def aggregate(results: dict[str, list[dict]]) -> list[dict]:
    """One row per variant: per-subset accuracy mean/std over seeds and per-subset MACs."""
    rows = []
    for label, reports in results.items():
        subsets = list(reports[0]["subsets"])
        acc = np.array([[r["subsets"][s]["accuracy"] for s in subsets] for r in reports])
        rows.append({"variant": label, "seeds": len(reports),
                     "accuracy_mean": dict(zip(subsets, acc.mean(0).round(6).tolist())),
                     "accuracy_std": dict(zip(subsets, acc.std(0).round(6).tolist())),
                     "macs": {s: reports[0]["subsets"][s]["macs"] for s in subsets},
                     "mean_subset_acc": float(acc.mean()), "worst_subset_acc": float(acc.mean(0).min())})
    return rows


def markdown(rows: list[dict]) -> str:
    subsets = list(rows[0]["accuracy_mean"])
    head = "| variant | seeds | " + " | ".join(subsets) + " | mean | worst | MACs (all channels) |"
    lines = [head, "|---|---:|" + "---:|" * (len(subsets) + 3)]
    for r in rows:
        cells = [f"{100 * r['accuracy_mean'][s]:.1f} ± {100 * r['accuracy_std'][s]:.1f}" for s in subsets]
        lines.append(f"| {r['variant']} | {r['seeds']} | " + " | ".join(cells)
                     + f" | {100 * r['mean_subset_acc']:.1f} | {100 * r['worst_subset_acc']:.1f}"
                     + f" | {r['macs'][subsets[0]]:,} |")
    return "Accuracy (%) per channel subset, mean ± std over seeds.\n\n" + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> Path:
    """Per-subset accuracy bars (error bars = std over seeds) and accuracy vs MACs."""
    rows = [{"label": r["variant"], "accuracy": r["accuracy_mean"], "std": r["accuracy_std"], "macs": r["macs"]}
            for r in rows]
    return subset_figure(rows, path)["path"]


def run_ablation(config: str, overrides: list[str], out: Path, modes: list[str], presets: list[str],
                 seeds: int, quick: bool, norms: list[str] = ("shared",), log=print) -> dict:
    base = load_config(config, overrides)
    matrix = variants(base.model.name, modes, presets, norms)
    quick_overrides = [f"train.epochs={min(base.train.epochs, 3)}", "data.image_size=32"] if quick else []
    uri = base.tracking.uri or default_tracking_uri(out / "runs" / "x")
    parent = MlflowTracker(uri, base.tracking.experiment, out, "ablation",
                           params={"modes": ",".join(modes), "presets": ",".join(presets), "norms": ",".join(norms), "seeds": seeds,
                                   "quick": quick, "model": base.model.name}, tags={"dynconv.kind": "ablation"},
                           resume=True) if base.tracking.enabled else None
    results: dict[str, list[dict]] = {}
    total = len(matrix) * seeds
    for i, (v, seed) in enumerate(((v, s) for v in matrix for s in range(seeds)), 1):
        run_dir = out / "runs" / f"{v.label.replace('/', '-')}-seed{seed}"
        done = run_dir / "eval.json"
        if done.exists() and (run_dir / "model.pt").exists():
            log(f"[{i}/{total}] {v.label} seed {seed}: already done, reusing {done}")
            results.setdefault(v.label, []).append(json.loads(done.read_text()))
            continue
        log(f"[{i}/{total}] {v.label} seed {seed}")
        cell = [f"model.name={v.model}", f"model.stem={v.stem}", f"model.norm={v.norm}", f"train.seed={seed}", f"run.dir={run_dir}",
                f"run.name=ablation-{v.label}-seed{seed}", "train.resume=auto",
                f"model.stem_mode={v.stem_mode or 'null'}", f"dropout.kind={base.dropout.kind if v.stem_mode else 'none'}"]
        cfg = load_config(config, overrides + quick_overrides + cell + [f"tracking.uri={uri}"])
        tags = {"dynconv.ablation": v.label}
        if parent:
            tags["mlflow.parentRunId"] = parent.run_id
        result = run_training(cfg, log=lambda _msg: None, tags=tags)
        results.setdefault(v.label, []).append(result["report"])
    rows = aggregate(results)
    files = [atomic_write_text(out / "ablation.json", json.dumps(rows, indent=2) + "\n"),
             atomic_write_text(out / "ablation.md", markdown(rows)),
             plot(rows, out / "ablation.png")]
    if parent:
        for f in files:
            parent.log_artifact(f)
        parent.log_metrics({f"mean_subset_acc_{r['variant'].replace('/', '_')}": r["mean_subset_acc"] for r in rows})
        parent.finish()
    return {"rows": rows, "files": [str(f) for f in files], "run_id": parent.run_id if parent else None}


def parse_choices(spec: str, valid, what: str) -> list[str]:
    from dynconv.errors import DynconvError

    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise DynconvError(f"unknown {what} {', '.join(bad) or repr(spec)}: choose from {', '.join(valid)}")
    return items


MODE_CHOICES, PRESET_CHOICES, NORM_CHOICES = STEM_MODES, tuple(STEM_PRESETS), NORM_MODES
