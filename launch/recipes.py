"""`dynconv recipes`: train a list of recipes (config overrides) on synthetic data sets the project
generates, over several seeds, and publish the per-subset table — the robustness study in one command.

A recipes file (YAML) names the data sets (``dynconv data synth`` settings) and the recipes::

    datasets:
      textures-600: {kind: textures, classes: 10, train_per_class: 60, val_per_class: 40, size: 32}
    recipes:
      - {name: RGB-only specialist, reference: true, set: {model.name: resnet18, dropout.kind: none}}
      - {name: slice / recalibrate, set: {model.stem_mode: slice, model.norm: recalibrate}}
      - {name: distilled, set: {train.teacher: "@RGB-only specialist"}}   # that recipe's model.pt, same seed
      - {name: EMA, datasets: [textures-600], set: {train.ema_decay: 0.99}}  # only on some data sets

Every recipe × data set × seed is one normal training run (reused when already finished), all under one
MLflow parent run. The page (``--publish docs/results.md``) has one table per data set — accuracy per
subset, mean ± std over seeds, mean and worst subset, ``rgb_gap`` to the reference — a figure per data set,
the goals of the robustness study measured, the command and the hardware.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from dynconv.choices import SLICED_STEMS
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text, read_yaml

from .config import load_config
from .matrix import Cell, cell_run_dir, finished, log_to_parent, markdown, plot, run_matrix

SYNTH_KEYS = {"kind", "classes", "train_per_class", "val_per_class", "size", "seed"}


def read_recipes(path: str | Path) -> tuple[dict[str, dict], list[dict]]:
    """(data sets, recipes) of a recipes file, checked for shape (the configs are checked by the caller)."""
    data = read_yaml(path, "recipes file", "pass a YAML file such as launch/recipes/robustness.yaml")
    if not isinstance(data, dict) or not isinstance(data.get("recipes"), list) or not data["recipes"]:
        raise DynconvError(f"recipes file {path} needs a 'recipes:' list (and optionally 'datasets:'), see "
                           "launch/recipes/robustness.yaml")
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise DynconvError(f"recipes file {path}: 'datasets:' must map names to 'dynconv data synth' settings")
    for name, spec in datasets.items():
        bad = sorted(set(spec or {}) - SYNTH_KEYS) if isinstance(spec, dict) else ["(not a mapping)"]
        if bad:
            raise DynconvError(f"recipes file {path}: data set {name!r} has unknown setting(s) {', '.join(bad)}: "
                               f"use {', '.join(sorted(SYNTH_KEYS))}")
    names = []
    for i, r in enumerate(data["recipes"]):
        if not (isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("set", {}), dict)
                and set(r) <= {"name", "set", "reference", "datasets"}):
            raise DynconvError(f"recipes file {path}: recipe {i + 1} must be {{name: ..., set: {{key: value}}, "
                               "reference: true|false, datasets: [names]}}")
        unknown = sorted(set(r.get("datasets") or []) - set(datasets))
        if unknown:
            raise DynconvError(f"recipes file {path}: recipe {r['name']!r} names unknown data set(s) "
                               f"{', '.join(unknown)}: the file has {', '.join(datasets) or 'none'}")
        if r["name"] in names:
            raise DynconvError(f"recipes file {path}: two recipes are called {r['name']!r}")
        names.append(r["name"])
    if sum(bool(r.get("reference")) for r in data["recipes"]) > 1:
        raise DynconvError(f"recipes file {path}: at most one recipe can be the reference")
    return datasets, data["recipes"]


def _synthesise(out: Path, name: str, spec: dict, log) -> tuple[Path, Path]:
    """The data set's ``train.beton`` and ``val.beton`` (made once), stored at its size as the folder
    loader sees it."""
    from dynconv.data import scan_image_folder
    from dynconv.data.synth import write_dataset
    from dynconv.extras import require

    root = out / "data" / name
    betons = root / "train.beton", root / "val.beton"
    if all(b.exists() for b in betons):
        return betons
    log(f"synthesising data set {name}: {spec}")
    write_dataset(root, num_classes=spec.get("classes", 10), train_per_class=spec.get("train_per_class", 60),
                  val_per_class=spec.get("val_per_class", 40), size=spec.get("size", 32), seed=spec.get("seed", 0),
                  kind=spec.get("kind", "shapes"), overwrite=True)
    write_beton = require("ffcv", "dynconv.data.ffcv_io").write_beton
    for split, beton in zip(("train", "val"), betons):
        write_beton(scan_image_folder(root / split), beton, size=spec.get("size", 32), store="raw", num_workers=2)
    return betons


def build_cells(config: str, overrides: list[str], datasets: dict, recipes: list[dict], out: Path, log=print,
                make_data: bool = True) -> list[Cell]:
    """One cell per data set and recipe, every config checked before anything trains."""
    groups = datasets.items() if datasets else [("", None)]
    cells = []
    for name, spec in groups:
        data = []
        if spec is not None:
            train, val = _synthesise(out, name, spec, log) if make_data else (out / "data" / name / "train.beton",
                                                                               out / "data" / name / "val.beton")
            data = [f"data.train={train}", f"data.val={val}", f"model.num_classes={spec.get('classes', 10)}",
                    f"data.image_size={spec.get('size', 32)}"]
        for r in recipes:
            if r.get("datasets") and name not in r["datasets"]:
                continue
            sets = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in (r.get("set") or {}).items()]
            cell = Cell(r["name"], tuple(data + sets), name, bool(r.get("reference")))
            try:
                load_config(config, [*overrides, *[s for s in cell.overrides if "=@" not in s]])
            except DynconvError as e:
                raise DynconvError(f"recipe {r['name']!r}: {e}") from None
            cells.append(cell)
    return cells


def machine() -> str:
    """The hardware and software a run was measured on, as a reader needs it."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPU cores, {gpu}; Python {platform.python_version()}, "
            f"PyTorch {torch.__version__.split('+')[0]}")


def goals(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """The robustness goals, measured on one data set's rows: (goal, measured, met)."""
    def row(label):
        return next((r for r in rows if r["variant"] == label), None)
    ref = next((r for r in rows if r["reference"]), None)
    study = row("prefix / shared (the study)")
    robust = [r for r in rows if not r["reference"] and r is not study]
    out = []
    if not (ref and study and robust):
        return out
    full = next(iter(ref["accuracy_mean"]))
    # a row "<reference>, <variation>" is the specialist trained as "<recipe>, <variation>" is: not a candidate,
    # and the fair reference of such a recipe
    twins = {r["variant"][len(ref["variant"]) + 2:]: r for r in robust if r["variant"].startswith(ref["variant"] + ", ")}
    robust = [r for r in robust if r not in twins.values()]
    best = max(robust, key=lambda r: r["mean_subset_acc"])
    same = twins.get(best["variant"].rpartition(", ")[2]) if ", " in best["variant"] else None
    spec = same or ref
    gap = 100 * (spec["accuracy_mean"][full] - best["accuracy_mean"][full])
    out.append((f"best recipe ({best['variant']}): RGB within 5 points of the specialist"
                + (f" ({spec['variant']})" if same else ""), f"{gap:+.1f} points", gap <= 5))
    ratio = best["mean_subset_acc"] / study["mean_subset_acc"]
    out.append(("its mean subset accuracy ≥ 1.3× the study's recipe (prefix / shared)", f"{ratio:.2f}×", ratio >= 1.3))
    worst = best["worst_subset_acc"] / best["accuracy_mean"][full]
    out.append(("its worst subset ≥ 0.6× its RGB", f"{worst:.2f}×", worst >= 0.6))
    for stem in SLICED_STEMS:
        a, b = row(f"{stem} / recalibrate"), row(f"{stem} / switchable")
        if a and b:
            d = 100 * abs(a["mean_subset_acc"] - b["mean_subset_acc"])
            out.append((f"{stem}: switchable and recalibrate within 3 points (mean subset)", f"{d:.1f} points", d <= 3))
    return out


def page(rows: list[dict], datasets: dict, command: str, seconds: float, figures: dict[str, str],
         reused: int = 0) -> str:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["# Results: channel robustness, recipe by recipe", "",
             "Produced by one command, which synthesises the data sets, trains every recipe on each with every",
             "seed, and writes this page and its figures:", "", "```bash", command, "```", "",
             f"Measured on {machine()}; {len(rows)} rows, {sum(r['seeds'] for r in rows)} training runs "
             + (f"({reused} of them reused from an earlier invocation; this one took "
                f"{seconds / 60:.0f} minutes)" if reused else f"in {seconds / 60:.0f} minutes")
             + ". Accuracy in %, mean ± std over seeds; `mean`/`worst` over the 7",
             "subsets; `rgb_gap`: the specialist's RGB accuracy minus the row's, in points.", ""]
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        spec = datasets.get(g) or {}
        if g:
            lines += [f"## {g}", "", f"`dynconv data synth --kind {spec.get('kind', 'shapes')} --classes "
                      f"{spec.get('classes', 10)} --train-per-class {spec.get('train_per_class', 60)} --val-per-class "
                      f"{spec.get('val_per_class', 40)} --size {spec.get('size', 32)}`", ""]
        lines += [markdown(mine, gap=True), f"![{g}]({figures[g]})" if g in figures else "", ""]
        measured = goals(mine)
        if measured:
            lines += ["| goal | measured | met |", "|---|---:|:---:|"]
            lines += [f"| {goal} | {value} | {'yes' if ok else '**no**'} |" for goal, value, ok in measured]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


KEEP_MARKER = "<!-- written by hand from here on: dynconv recipes --publish keeps it -->"


def kept_reading(target: Path) -> str:
    """The hand-written part of an existing results page (from :data:`KEEP_MARKER` on), to append again."""
    if not target.exists():
        return ""
    old = target.read_text()
    return "\n" + old[old.index(KEEP_MARKER):] if KEEP_MARKER in old else ""


def run_recipes(config: str, recipes_file: str, out: Path, seeds: int, overrides: list[str] = (),
                publish: str | None = None, log=print) -> dict:
    t0 = time.perf_counter()
    datasets, recipes = read_recipes(recipes_file)
    build_cells(config, list(overrides), datasets, recipes, out, log, make_data=False)  # every config, before data
    cells = build_cells(config, list(overrides), datasets, recipes, out, log)
    reused = sum(finished(cell_run_dir(out, c, seed)) for c in cells for seed in range(seeds))
    rows, parent = run_matrix(config, list(overrides), out, cells, seeds, "recipes",
                              params={"recipes": str(recipes_file), "datasets": ",".join(datasets)}, log=log)
    target = Path(publish) if publish else out / "results.md"
    figures = {}
    files = [atomic_write_text(out / "recipes.json", json.dumps(rows, indent=2) + "\n")]
    for i, g in enumerate(dict.fromkeys(r["group"] for r in rows)):
        name = f"{target.stem}.png" if i == 0 else f"{target.stem}-{g}.png"
        files.append(plot([r for r in rows if r["group"] == g], target.parent / name, title=g))
        figures[g] = name
    command = "dynconv " + " ".join(sys.argv[1:]) if sys.argv and "dynconv" in sys.argv[0] else \
        f"dynconv recipes --config {config} --recipes {recipes_file} --seeds {seeds} --out {out}"
    text = page(rows, datasets, command, time.perf_counter() - t0, figures, reused)
    files.append(atomic_write_text(target, text + kept_reading(target)))
    log_to_parent(parent, files, rows)
    return {"rows": rows, "files": [str(f) for f in files], "page": str(target),
            "run_id": parent.run_id if parent else None}
