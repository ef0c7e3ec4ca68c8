"""`dynconv compare` against runs logged by the trainer."""
import csv
import io
import json

import pytest
from PIL import Image
from helpers import run_cli, train_args


NORMS = ["shared", "recalibrate", "group"]


@pytest.fixture(scope="module")
def store(tiny_data, module_tmp):
    """Three short training runs (one per norm mode) in one sqlite store."""
    root = module_tmp("cmp")
    for norm in NORMS:
        assert run_cli(*train_args(tiny_data, root / norm, "train.epochs=2", f"model.norm={norm}",
                                    f"run.name=run-{norm}", "tracking.experiment=cmp")) == 0
    return f"sqlite:///{root / 'mlruns.db'}", root


def _compare(capsys, *args) -> str:
    capsys.readouterr()
    assert run_cli("compare", *args) == 0
    return capsys.readouterr().out


@pytest.mark.slow
def test_compare_formats_and_ordering(store, capsys):
    uri, root = store
    rows = json.loads(_compare(capsys, "--tracking-uri", uri, "--experiment", "cmp", "--format", "json"))
    assert sorted(r["run"] for r in rows) == [f"run-{n}" for n in sorted(NORMS)]
    worst = [r["worst_subset_acc"] for r in rows]
    assert worst == sorted(worst, reverse=True)  # default sort: worst subset accuracy, best first
    for r in rows:
        report = json.loads((root / r["norm"] / "eval.json").read_text())
        assert r["acc"]["G"] == pytest.approx(report["subsets"]["G"]["accuracy"])
        assert r["macs"] == report["subsets"]["RGB"]["macs"] and r["epochs"] == 2
    by_rgb = json.loads(_compare(capsys, "--tracking-uri", uri, "--format", "json", "--sort", "acc_RGB"))
    assert [r["acc"]["RGB"] for r in by_rgb] == sorted((r["acc"]["RGB"] for r in rows), reverse=True)

    text = _compare(capsys, "--tracking-uri", uri, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 3 and {"acc_RGB", "acc_B", "mean_subset_acc", "norm", "macs"} <= set(table[0])

    md = _compare(capsys, "--tracking-uri", uri, "--format", "markdown", "--filter", "params.`model.norm` = 'group'")
    assert md.count("run-") == 1 and "| run-group |" in md


@pytest.mark.slow
def test_compare_baseline_plot_and_log_to(store, tmp_path, capsys):
    uri, _ = store
    rows = json.loads(_compare(capsys, "--tracking-uri", uri, "--format", "json", "--baseline", "run-shared"))
    base = next(r for r in rows if r["run"] == "run-shared")
    assert base["d_mean"] == 0 and base["d_worst"] == 0
    for r in rows:
        assert r["d_mean"] == pytest.approx(r["mean_subset_acc"] - base["mean_subset_acc"])
    from dynconv.launch.compare import collect_rows, plot_rows

    collected, client = collect_rows(uri, ["cmp"])
    info = plot_rows(collected, client, tmp_path / "cmp.png")
    assert info["series"] == {"bars": 3, "scatter": 3, "curves": 3}
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.size[0] > 1000 and len(set(im.convert("L").getdata())) > 20
    target = base["run_id"]
    _compare(capsys, "--tracking-uri", uri, "--format", "markdown", "--plot", tmp_path / "c.svg", "--log-to", target)
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    logged = {a.path for a in client.list_artifacts(target, "compare")}
    assert logged == {"compare/c.svg", "compare/compare.md"}


def test_compare_errors(tmp_path, capsys):
    # a command that only reads never creates a store: a mistyped path is an error, not an empty result
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'mlrun.db'}") == 2
    assert "no MLflow store at" in capsys.readouterr().err and not (tmp_path / "mlrun.db").exists()
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'empty.db'}").search_experiments()  # an existing, empty store
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}") == 2
    assert "no runs with per-subset results" in capsys.readouterr().err
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--experiment", "nope") == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def _row(name: str) -> dict:
    acc = {s: 0.5 for s in ("RGB", "RG", "RB", "GB", "R", "G", "B")}
    return {"run": name, "run_id": name * 4, "model": "dynamic_resnet18", "stem_mode": "slice", "stem": "torchvision",
            "norm": "recalibrate", "dropout": "uniform_subsets", "epochs": 12, "macs": 148_000_000, "acc": acc,
            "mean_subset_acc": 0.5, "worst_subset_acc": 0.5, "f1": 0.5, "full": "RGB"}


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_terminal_table_fits_the_terminal(width, capsys, monkeypatch):
    """It used to cut every number to '…' below ~170 columns: columns are dropped by priority instead, and
    the title says which; subsets, mean and worst always stay."""
    from dynconv.launch.compare import fit_columns, header, print_rich

    rows = [_row("slice-recal-seed0"), _row("prefix-shared-seed1")]
    cols, dropped = fit_columns(rows, width)
    assert {"run", "acc_RGB", "acc_B", "mean_subset_acc", "worst_subset_acc"} <= set(cols)
    assert (width == 200) == (not dropped)
    assert header("f1", rows) == "F1 RGB" and header("macs", rows) == "MACs RGB"
    monkeypatch.setenv("COLUMNS", str(width))
    print_rich(rows)
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= width and "…" not in out and "accuracy in %" in out


def test_a_narrowed_table_keeps_what_identifies_a_run_the_model_first(capsys, monkeypatch):
    """At 100 columns the table used to give up the model before the stem mode and norm: the read-outs go first,
    then what identifies a run, the model last of all."""
    from dynconv.launch.compare import DROP_ORDER, IDENTITY_COLUMNS, fit_columns, print_rich

    rows = [_row("seed0"), _row("seed1")]
    cols, dropped = fit_columns(rows, 100)
    assert "model" in cols and {"epochs", "macs", "f1"} <= set(dropped)
    assert {"run", "acc_RGB", "acc_B", "mean_subset_acc", "worst_subset_acc"} <= set(cols)
    for width in range(60, 201, 5):  # at any width: an identifying column is kept only with every one before it
        cols, _ = fit_columns(rows, width)
        kept = [c in cols for c in IDENTITY_COLUMNS]
        assert kept == sorted(kept, reverse=True), (width, cols)
    assert DROP_ORDER[-1] == "model" and set(IDENTITY_COLUMNS) <= set(DROP_ORDER)
    monkeypatch.setenv("COLUMNS", "100")
    print_rich(rows)
    out = capsys.readouterr().out
    assert "dynamic_resnet18" in out and max(len(line) for line in out.splitlines()) <= 100
