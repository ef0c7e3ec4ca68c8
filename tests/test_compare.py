"""`dynconv compare` against runs logged by the trainer."""
import csv
import io
import json

import pytest
from PIL import Image

from conftest import run_cli
from test_cli import _train_args

NORMS = ["shared", "recalibrate", "group"]


@pytest.fixture(scope="module")
def store(tiny_data, tmp_path_factory):
    """Three short training runs (one per norm mode) in one sqlite store."""
    root = tmp_path_factory.mktemp("cmp")
    for norm in NORMS:
        assert run_cli(*_train_args(tiny_data, root / norm, "train.epochs=2", f"model.norm={norm}",
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
    from launch.compare import collect_rows, plot_rows

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
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}") == 2
    assert "no runs with per-subset results" in capsys.readouterr().err
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}", "--experiment", "nope") == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err
