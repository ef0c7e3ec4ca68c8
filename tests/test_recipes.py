"""`dynconv recipes`: the recipes file, its checks (before any data or training), and the study's goals
computed from the rows; one tiny end-to-end run (slow)."""
from __future__ import annotations

import json
import re

import pytest

from dynconv.launch.matrix import Cell, aggregate
from dynconv.launch.recipes import goals, read_recipes
from helpers import CONFIG, run_cli

SUBSETS = ("RGB", "RG", "R")


def _report(accs):
    return {"subsets": {s: {"accuracy": a, "macs": 10} for s, a in zip(SUBSETS, accs)}}


def _trained(accs, macs):
    return {**_report(accs), "training": {"epochs": 1, "image_passes": 10, "train_macs": macs}}


def test_per_subset_specialists_compose_one_row_and_every_recipe_is_measured_against_them():
    """A specialists recipe becomes one cell per subset (trained on it alone, scored on it); their rows compose
    one reference row; each recipe's per-subset gap, the equal-compute specialist and the goals follow."""
    from dynconv.launch.recipes import build_cells, compose_specialists, specialist_gaps
    from helpers import ROOT

    recipes = [{"name": "specialists", "specialists": True, "reference": True, "set": {"model.name": "resnet18"}},
               {"name": "specialists, 4x epochs", "set": {"model.name": "resnet18", "dropout.kind": "none"}},
               {"name": "sandwich", "set": {"dropout.kind": "sandwich"}}]
    cells = build_cells(str(CONFIG), [], {}, recipes, ROOT / "x", make_data=False)
    assert [c.label for c in cells][:3] == ["specialists: RGB", "specialists: RG", "specialists: RB"]
    rg = next(c for c in cells if c.specialist == "RG").overrides
    assert "dropout.kind=weighted_subsets" in rg and 'dropout.weights={"RG": 1}' in rg and "eval.subsets=RG" in rg
    assert "dropout.kind=none" in next(c for c in cells if c.specialist == "RGB").overrides
    reports = {Cell(f"specialists: {s}", (), "", False, s): [
        {"subsets": {s: {"accuracy": a + d, "macs": 10}}, "training": {"train_macs": 1e12}} for d in (0.0, 0.02, 0.04)]
        for s, a in zip(SUBSETS, (0.9, 0.7, 0.5))}
    reports[Cell("specialists, 4x epochs", (), "")] = [_trained([0.95, 0.5, 0.3], 4e12)] * 3
    reports[Cell("sandwich", (), "")] = [_trained([0.91, 0.70, 0.45], 4e12), _trained([0.93, 0.72, 0.47], 4e12),
                                         _trained([0.95, 0.74, 0.49], 4e12)]
    rows = compose_specialists(aggregate(reports), recipes)
    spec, _, sandwich = rows
    assert spec["variant"] == "specialists" and spec["reference"] and spec["train_macs"] == 3e12
    assert spec["accuracy_mean"] == pytest.approx({"RGB": 0.92, "RG": 0.72, "R": 0.52})
    assert spec["accuracy_ci"]["RGB"] == pytest.approx(4.303 * 0.02 / 3 ** 0.5, rel=1e-3)  # t(0.975, 2) s / sqrt(3)
    assert sandwich["rgb_gap"] == pytest.approx(-0.01)
    table = specialist_gaps(rows)
    assert "| sandwich | specialists | -1.0 ± " in table and "| +5.0 |" in table.splitlines()[-1]  # R: 0.52 vs 0.47
    measured = dict((g.split(" (")[0] if g.startswith("best") else g, (v, ok)) for g, v, ok in goals(rows))
    assert measured["best recipe"] == ("-1.0 points", True)
    assert measured["... within 3 points at equal training compute (specialists, 4x epochs)"] == ("+2.0 points", True)
    assert measured["... every subset within 3 points of its own specialist (specialists)"] == ("largest +5.0 (R)",
                                                                                               False)


def test_a_recipe_trained_longer_is_held_to_the_specialists_trained_as_long():
    """'uniform, 4x epochs' is compared with 'specialists, 4x epochs' subset by subset (and on RGB with the first
    specialist row varied alike); a recipe without the variation with the first set of specialists."""
    from dynconv.launch.recipes import specialist_gaps, specialists_for

    def row(name, acc, **kw):
        return {"variant": name, "group": "", "reference": False, "seeds": 3, "mean_subset_acc": sum(acc) / 3,
                "accuracy_mean": dict(zip(SUBSETS, acc)), "accuracy_ci": dict.fromkeys(SUBSETS, 0.0), **kw}
    short = row("specialists", [0.90, 0.70, 0.50], specialists=True, reference=True)
    long = row("specialists, 4x epochs", [0.97, 0.80, 0.60], specialists=True)
    plain, longer = row("uniform", [0.91, 0.72, 0.52]), row("uniform, 4x epochs", [0.965, 0.79, 0.59])
    rows = [short, long, plain, longer]
    assert specialists_for(plain, rows) is short and specialists_for(longer, rows) is long
    table = specialist_gaps(rows)
    assert "| uniform | specialists | -1.0 ± 0.0 | -2.0 ± 0.0 | -2.0 ± 0.0 | -1.0 |" in table
    assert "| uniform, 4x epochs | specialists, 4x epochs | +0.5 ± 0.0 | +1.0 ± 0.0 | +1.0 ± 0.0 | +1.0 |" in table
    measured = {g: (v, ok) for g, v, ok in goals(rows)}
    assert measured["best recipe (uniform, 4x epochs): RGB within 1 point of the RGB specialist at equal epochs "
                    "(specialists, 4x epochs)"] == ("+0.5 points", True)
    assert measured["... every subset within 3 points of its own specialist (specialists, 4x epochs)"] == (
        "largest +1.0 (RG)", True)


def test_aggregate_means_stds_and_the_gap_to_the_reference():
    ref, rob = Cell("RGB-only specialist", (), "d", True), Cell("slice / recalibrate", (), "d")
    rows = aggregate({ref: [_report([0.9, 0.5, 0.3]), _report([0.8, 0.5, 0.3])],
                      rob: [_report([0.8, 0.7, 0.6]), _report([0.8, 0.7, 0.6])]})
    by = {r["variant"]: r for r in rows}
    assert by["RGB-only specialist"]["accuracy_mean"]["RGB"] == pytest.approx(0.85)
    assert by["RGB-only specialist"]["accuracy_std"]["RGB"] == pytest.approx(0.05)
    assert by["slice / recalibrate"]["rgb_gap"] == pytest.approx(0.05)
    assert by["slice / recalibrate"]["worst_subset_acc"] == pytest.approx(0.6)


def test_goals_are_measured_from_the_rows():
    cells = {Cell("RGB-only specialist", (), "", True): [_report([0.9, 0.4, 0.2])],
             Cell("prefix / shared (the study)", (), ""): [_report([0.8, 0.4, 0.3])],
             Cell("slice / recalibrate", (), ""): [_report([0.88, 0.8, 0.7])],
             Cell("slice / switchable", (), ""): [_report([0.87, 0.8, 0.69])]}
    measured = goals(aggregate(cells))
    assert measured[0][0].startswith("best recipe (slice / recalibrate): RGB within 1 point")
    assert measured[0][1] == "+2.0 points" and not measured[0][2]
    assert measured[1][2] and measured[2][2] and len(measured) == 3
    assert measured[1][1] == f"{(0.88 + 0.8 + 0.7) / (0.8 + 0.4 + 0.3):.2f}×"


@pytest.mark.parametrize("text, message", [
    ("- a\n", "needs a 'recipes:' list"),
    ("recipes:\n  - {name: a, set: {model.norm: x}}\n", "recipe 'a': config key 'model.norm'"),
    ("recipes:\n  - {name: a}\n  - {name: a}\n", "two recipes are called 'a'"),
    ("datasets: {d: {kind: shapes, colours: 3}}\nrecipes:\n  - {name: a}\n", "unknown setting(s) colours"),
    ("recipes:\n  - {name: a, reference: true}\n  - {name: b, reference: true}\n", "at most one recipe"),
    ("recipes:\n  - {name: a, datasets: [nope]}\n", "names unknown data set(s) nope"),
])
def test_bad_recipes_files_are_one_line_errors(tmp_path, capsys, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert run_cli("recipes", "--config", CONFIG, "--recipes", path, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out" / "data").exists()  # checked before any data set is made


def test_the_shipped_recipes_file_is_valid():
    from dynconv.launch.recipes import build_cells
    from helpers import ROOT

    datasets, recipes = read_recipes(ROOT / "launch" / "recipes" / "robustness.yaml")
    cells = build_cells(str(ROOT / "launch" / "configs" / "robustness.yaml"), [], datasets, recipes, ROOT / "x",
                        make_data=False)
    expected = sum(1 for d in datasets for r in recipes if not r.get("datasets") or d in r["datasets"])
    assert len(cells) == expected and sum(c.reference for c in cells) == len(datasets)
    assert {c.group for c in cells if c.label == "slice / recalibrate, weight EMA"} == {"textures-600"}


@pytest.mark.slow
def test_recipes_end_to_end_with_a_teacher_reference(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("datasets:\n  tiny: {kind: textures, classes: 2, train_per_class: 16, val_per_class: 8, size: 16}\n"
                    "recipes:\n"
                    "  - {name: specialist, reference: true, set: {model.name: resnet18, model.stem_mode: null,"
                    " model.norm: shared, dropout.kind: none}}\n"
                    "  - {name: distilled, set: {train.teacher: '@specialist', model.norm: recalibrate}}\n")
    page = tmp_path / "docs" / "results.md"
    assert run_cli("recipes", "--config", CONFIG, "--recipes", path, "--out", tmp_path / "out", "--seeds", "1",
                   "--publish", page, "train.epochs=1", "train.batch_size=8", "data.num_workers=1",
                   "tracking.enabled=false", "calibration.batches=1") == 0
    text = page.read_text()
    assert "## tiny" in text and "| distilled | 1 |" in text and "![tiny](results.png)" in text
    assert re.search(r"2 training runs, \d+ minutes of training in all \(this invocation: \d+ minutes\)", text)
    assert (page.parent / "results.png").exists()
    rows = json.loads((tmp_path / "out" / "recipes.json").read_text())
    assert [r["variant"] for r in rows] == ["specialist", "distilled"] and "rgb_gap" in rows[1]
    cfg = (tmp_path / "out" / "runs" / "tiny-distilled-seed0" / "config.yaml").read_text()
    assert str(tmp_path / "out" / "runs" / "tiny-specialist-seed0" / "model.pt") in cfg
    # publishing again reuses both runs, says so on the page, and keeps what was written by hand below the marker
    from dynconv.launch.recipes import KEEP_MARKER

    page.write_text(text + f"\n{KEEP_MARKER}\n\n## What it says\n\nhand-written\n")
    capsys.readouterr()
    assert run_cli("recipes", "--config", CONFIG, "--recipes", path, "--out", tmp_path / "out", "--seeds", "1",
                   "--publish", page, "train.epochs=1", "train.batch_size=8", "data.num_workers=1",
                   "tracking.enabled=false", "calibration.batches=1") == 0
    assert capsys.readouterr().out.count("already done, reusing") == 2
    again = page.read_text()
    assert "(2 runs reused from an earlier invocation" in again
    assert again.count(KEEP_MARKER) == 1 and again.endswith("## What it says\n\nhand-written\n")


def test_a_recipe_with_a_variation_is_held_to_the_specialist_with_the_same_variation():
    """'slice / recalibrate, 2x epochs' is compared with 'RGB-only specialist, 2x epochs' (trained as long), which
    is itself no candidate for the best recipe."""
    cells = {Cell("RGB-only specialist", (), "", True): [_report([0.6, 0.4, 0.2])],
             Cell("RGB-only specialist, 2x epochs", (), ""): [_report([0.95, 0.9, 0.9])],
             Cell("prefix / shared (the study)", (), ""): [_report([0.5, 0.4, 0.3])],
             Cell("slice / recalibrate, 2x epochs", (), ""): [_report([0.85, 0.8, 0.7])]}
    (best, *_rest) = goals(aggregate(cells))
    assert best[0] == ("best recipe (slice / recalibrate, 2x epochs): RGB within 1 point of the RGB specialist at "
                       "equal epochs (RGB-only specialist, 2x epochs)")
    assert best[1] == "+10.0 points" and not best[2]
