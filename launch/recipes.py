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
      - {name: per-subset specialists, specialists: true, set: {model.name: resnet18}}

A ``specialists: true`` recipe is one plain model per channel subset, each trained and scored on its subset only
(its absent channels zero-filled: a model of those channels alone): the best each subset can do, and the
reference every recipe's per-subset gap is measured against. Its row composes the seven (for RGB) models.

Every recipe × data set × seed is one normal training run (reused when already finished), all under one
MLflow parent run. The page (``--publish docs/results.md``) has one table per data set — accuracy per
subset, mean ± 95 % interval over seeds, mean and worst subset, ``rgb_gap`` to the reference, training compute,
each recipe's gap to the per-subset specialists — a figure per data set, the goals measured, the command and the
hardware.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from dynconv.channels import all_subsets, num_channels, subset_name
from dynconv.choices import SLICED_STEMS
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text, read_yaml
from dynconv.run_files import EVAL_JSON

from .config import load_config
from .matrix import Cell, cell_run_dir, finished, log_to_parent, markdown, plot, run_matrix, with_gaps

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
                and set(r) <= {"name", "set", "reference", "datasets", "specialists", "section"}):
            raise DynconvError(f"recipes file {path}: recipe {i + 1} must be {{name: ..., set: {{key: value}}, "
                               "reference: true|false, specialists: true|false, datasets: [names], section: TITLE}}")
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
            mine = [Cell(r["name"], tuple(data + sets), name, bool(r.get("reference")))]
            if r.get("specialists"):
                channels = _checked(config, overrides, mine[0]).data.channels
                mine = [Cell(f"{r['name']}: {s}", tuple(data + sets + only), name, False, s)
                        for s, only in specialist_overrides(channels)]
            for cell in mine:
                _checked(config, overrides, cell)
            cells += mine
    return cells


def _checked(config: str, overrides: list[str], cell: Cell):
    try:
        return load_config(config, [*overrides, *[s for s in cell.overrides if "=@" not in s]])
    except DynconvError as e:
        raise DynconvError(f"recipe {cell.label!r}: {e}") from None


def specialist_overrides(channels: str) -> list[tuple[str, list[str]]]:
    """(subset name, overrides) of every subset's specialist: trained on that subset alone, scored on it."""
    out = []
    for s in all_subsets(channels):
        name = subset_name(s, channels)
        train = ["dropout.kind=none"] if len(s) == num_channels(channels) else \
            ["dropout.kind=weighted_subsets", f"dropout.weights={json.dumps({name: 1})}"]
        out.append((name, [*train, f"eval.subsets={name}"]))
    return out


def compose_specialists(rows: list[dict], recipes: list[dict]) -> list[dict]:
    """The rows of a ``specialists`` recipe's models as one row per data set: each subset from its own model,
    the training compute of them all together."""
    out = []
    for row in rows:
        if not row.get("specialist"):
            out.append(row)
            continue
        name = row["variant"].rpartition(": ")[0]
        composite = next((r for r in out if r["variant"] == name and r["group"] == row["group"]), None)
        if composite is None:
            recipe = next(r for r in recipes if r["name"] == name)
            composite = {"variant": name, "group": row["group"], "reference": bool(recipe.get("reference")),
                         "seeds": row["seeds"], "specialists": True, "train_macs": 0.0, **{
                             k: {} for k in ("accuracy_mean", "accuracy_std", "accuracy_ci", "accuracy_runs", "macs")}}
            out.append(composite)
        s = row["specialist"]
        for key in ("accuracy_mean", "accuracy_std", "accuracy_ci", "accuracy_runs", "macs"):
            composite[key][s] = row[key][s]
        composite["seeds"] = min(composite["seeds"], row["seeds"])
        composite["train_macs"] = composite["train_macs"] + row["train_macs"] if row.get("train_macs") \
            and composite["train_macs"] is not None else None
    for r in out:
        if r.get("specialists"):
            acc = np.array(list(r["accuracy_runs"].values()))  # subsets x seeds
            r.update(mean_subset_acc=float(acc.mean()), worst_subset_acc=float(acc.mean(1).min()),
                     mean_subset_acc_std=float(acc.mean(0).std()))
    return with_gaps(out)


def section_table(rows: list[dict]) -> str:
    """Models compared on the full input (the study's Table 3): accuracy, precision, recall, F1 (weighted), MACs,
    training time per epoch, and each row's accuracy as a share of the first row's."""
    lines = ["| model | seeds | accuracy | precision | recall | F1 (weighted) | MACs | s / epoch | accuracy ÷ first row's |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    first = rows[0]["scores"]["accuracy"]
    for r in rows:
        sc, full = r["scores"], next(iter(r["accuracy_mean"]))
        seconds = f"{r['epoch_seconds']:.1f}" if r.get("epoch_seconds") else "–"
        lines.append(f"| {r['variant']} | {r['seeds']} | {100 * sc['accuracy']:.1f} ± {100 * r['accuracy_ci'][full]:.1f} "
                     f"| {100 * sc['precision']:.1f} | {100 * sc['recall']:.1f} | {100 * sc['f1']:.1f} "
                     f"| {r['macs'][full]:,} | {seconds} | {sc['accuracy'] / first:.2f} |")
    return "\n".join(lines) + "\n"


def varied_alike(row: dict, candidates: list[dict]) -> dict | None:
    """The candidate varied as ``row`` is: "<recipe>, 4x epochs" matches "<reference>, RGB at 4x epochs" and
    "<reference>, 4x epochs" (the first of them); None when ``row`` has no variation or none matches."""
    if ", " not in row["variant"]:
        return None
    tail = " " + row["variant"].rpartition(", ")[2]
    return next((r for r in candidates if r is not row and r["variant"].endswith(tail)), None)


def specialists_for(row: dict, rows: list[dict]) -> dict | None:
    """The per-subset specialists ``row`` is held to: those trained with its variation, else the first set."""
    sets = [r for r in rows if r.get("specialists")]
    return varied_alike(row, sets) or (sets[0] if sets else None)


def specialist_gaps(rows: list[dict]) -> str:
    """Each recipe's gap to the per-subset specialists trained as it is (its variation, e.g. "4x epochs", else the
    first set), per subset (points; positive: below the specialist)."""
    first = next((r for r in rows if r.get("specialists")), None)
    if first is None:
        return ""
    subsets = list(first["accuracy_mean"])
    lines = ["Gap to the per-subset specialists trained as long (points, specialist minus recipe; ± the two 95 % "
             "intervals combined):", "", "| variant | specialists | " + " | ".join(subsets) + " | largest |",
             "|---|---|" + "---:|" * (len(subsets) + 1)]
    for r in rows:
        if r.get("specialists") or list(r["accuracy_mean"]) != subsets:
            continue
        spec = specialists_for(r, rows)
        gaps = {s: 100 * (spec["accuracy_mean"][s] - r["accuracy_mean"][s]) for s in subsets}
        pm = {s: 100 * float(np.hypot(spec["accuracy_ci"][s], r["accuracy_ci"][s])) for s in subsets}
        lines.append(f"| {r['variant']} | {spec['variant']} | "
                     + " | ".join(f"{gaps[s]:+.1f} ± {pm[s]:.1f}" for s in subsets) + f" | {max(gaps.values()):+.1f} |")
    return "\n".join(lines) + "\n"


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
    family = [r for r in rows if ref and r["variant"].startswith(ref["variant"] + ", ")]  # the reference, varied
    robust = [r for r in rows if not r["reference"] and r is not study and not r.get("specialists")
              and r not in family and "baseline" not in r["variant"]]
    if not (ref and robust):
        return []
    full = next(iter(ref["accuracy_mean"]))
    best = max(robust, key=lambda r: r["mean_subset_acc"])
    out = []
    # a row "<reference>, <variation>" is the specialist trained as "<recipe>, <variation>" is: the fair reference
    same = varied_alike(best, family)
    spec = same or ref
    gap = 100 * (spec["accuracy_mean"][full] - best["accuracy_mean"][full])
    out.append((f"best recipe ({best['variant']}): {full} within 1 point of the {full} specialist at equal epochs"
                + (f" ({spec['variant']})" if same else ""), f"{gap:+.1f} points", gap <= 1))
    if best.get("train_macs"):
        matched = [r for r in [ref, *family] if r.get("train_macs")
                   and abs(r["train_macs"] / best["train_macs"] - 1) <= 0.15]
        if matched:
            twin = matched[0]
            gap = 100 * (twin["accuracy_mean"][full] - best["accuracy_mean"][full])
            out.append((f"... within 3 points at equal training compute ({twin['variant']})", f"{gap:+.1f} points",
                        gap <= 3))
    specialists = specialists_for(best, rows)
    if specialists:
        gaps = {s: 100 * (specialists["accuracy_mean"][s] - best["accuracy_mean"][s]) for s in specialists["accuracy_mean"]}
        worst = max(gaps, key=gaps.get)
        out.append((f"... every subset within 3 points of its own specialist ({specialists['variant']})",
                    f"largest {gaps[worst]:+.1f} ({worst})", gaps[worst] <= 3))
    if study:
        ratio = best["mean_subset_acc"] / study["mean_subset_acc"]
        out.append(("its mean subset accuracy ≥ 1.3× the study's recipe (prefix / shared)", f"{ratio:.2f}×",
                    ratio >= 1.3))
    for stem in SLICED_STEMS:
        a, b = row(f"{stem} / recalibrate"), row(f"{stem} / switchable")
        if a and b:
            d = 100 * abs(a["mean_subset_acc"] - b["mean_subset_acc"])
            out.append((f"{stem}: switchable and recalibrate within 3 points (mean subset)", f"{d:.1f} points", d <= 3))
    return out


def page(rows: list[dict], datasets: dict, command: str, seconds: float, figures: dict[str, str],
         reused: int = 0, training_seconds: float = 0.0) -> str:
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["# Results: channel robustness, recipe by recipe", "",
             "Produced by one command, which synthesises the data sets, trains every recipe on each with every",
             "seed, and writes this page and its figures:", "", "```bash", command, "```", "",
             f"Measured on {machine()}; {len(rows)} rows, {sum(r['seeds'] for r in rows)} training runs, "
             + (f"{training_seconds / 60:.0f} minutes of training in all " if training_seconds else "")
             + (f"({reused} runs reused from an earlier invocation; this one took {seconds / 60:.0f} minutes)"
                if reused else f"(this invocation: {seconds / 60:.0f} minutes)")
             + ". Accuracy in %, mean ± the 95 % interval of the mean over seeds (Student's t); `mean`/`worst` over",
             "the subsets; `rgb_gap`: the specialist's RGB accuracy minus the row's, in points; training compute: the",
             "forward MACs of every image pass of training (a sandwich step makes `dropout.n_subsets` passes; the",
             "per-subset specialists: all of their models together).", ""]
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        spec = datasets.get(g) or {}
        if g:
            lines += [f"## {g}", "", f"`dynconv data synth --kind {spec.get('kind', 'shapes')} --classes "
                      f"{spec.get('classes', 10)} --train-per-class {spec.get('train_per_class', 60)} --val-per-class "
                      f"{spec.get('val_per_class', 40)} --size {spec.get('size', 32)}`", ""]
        main = [r for r in mine if not r.get("section")]
        lines += [markdown(main, gap=True, spread="ci"), specialist_gaps(main),
                  f"![{g}]({figures[g]})" if g in figures else "", ""] if main else []
        for title in dict.fromkeys(r["section"] for r in mine if r.get("section")):
            lines += [f"### {title}", "", section_table([r for r in mine if r.get("section") == title]), ""]
        measured = goals(main)
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
    rows = compose_specialists(rows, recipes)
    sections = {r["name"]: r.get("section", "") for r in recipes}
    for row in rows:
        row["section"] = sections.get(row["variant"], "")
    target = Path(publish) if publish else out / "results.md"
    figures = {}
    files = [atomic_write_text(out / "recipes.json", json.dumps(rows, indent=2) + "\n")]
    for i, g in enumerate(dict.fromkeys(r["group"] for r in rows)):
        name = f"{target.stem}.png" if i == 0 else f"{target.stem}-{g}.png"
        files.append(plot([r for r in rows if r["group"] == g and not r.get("section")], target.parent / name, title=g))
        figures[g] = name
    command = " ".join([f"dynconv recipes --config {config} --recipes {recipes_file} --seeds {seeds} --out {out}",
                        *([f"--publish {publish}"] if publish else []), *overrides])
    spent = [json.loads((cell_run_dir(out, c, seed) / EVAL_JSON).read_text()).get("training", {})
             .get("train_seconds") for c in cells for seed in range(seeds)]
    spent = sum(spent) if None not in spent else 0.0  # runs of older versions have no record: no partial sum
    text = page(rows, datasets, command, time.perf_counter() - t0, figures, reused, spent)
    files.append(atomic_write_text(target, text + kept_reading(target)))
    log_to_parent(parent, files, rows)
    return {"rows": rows, "files": [str(f) for f in files], "page": str(target),
            "run_id": parent.run_id if parent else None}
