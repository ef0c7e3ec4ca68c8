"""`dynconv compare`: one row per MLflow run — accuracy per channel subset against compute."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from dynconv.channels import all_subsets, subset_name
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.metric_names import MEAN_SUBSET_ACC, VAL_ACC, WORST_SUBSET_ACC, logged_name, subset_metric

from .mixture import DATASETS_TAG
from .plots import subset_figure
from .mlflow_store import existing_store, mlflow_client, store_errors

INFO_COLUMNS = ("run", "run_id", "model", "stem_mode", "stem", "norm", "dropout", "epochs", "macs")


def _param(params: dict, key: str, default: str = "") -> str:
    value = params.get(key, default)
    return default if value in ("None", "") else value


def _model_settings(params: dict, model: str) -> dict[str, str]:
    """The run's stem mode, stem and norm as its model was built: logged (runs log every argument of the
    builder), or for a run logged before that, the builder's own default of an argument it left unset;
    ``-`` where the model has no such argument."""
    from dynconv.models import list_models, resolve_model_kwargs

    defaults = resolve_model_kwargs(model) if model in list_models() else {}
    return {key: _param(params, f"model.{key}", "-" if defaults.get(key) is None else str(defaults[key]))
            for key in ("stem_mode", "stem", "norm")}


def run_rows(run) -> list[dict]:
    """The comparison rows of one run: one, or one per dataset of a mixture; none without per-subset results."""
    datasets = run.data.tags.get(DATASETS_TAG)
    if not datasets:
        return [r for r in [run_row(run)] if r is not None]
    rows = [run_row(run, d["name"], d["channels"]) for d in json.loads(datasets)]
    return [r for r in rows if r is not None]


def run_row(run, dataset: str | None = None, channels: str | None = None) -> dict | None:
    """The comparison row of one run (of one dataset of a mixture: its ``<dataset>:<subset>`` results), or None
    when it has no per-subset results."""
    p, m = run.data.params, run.data.metrics
    channels = channels or _param(p, "data.channels", "RGB")
    key = f"{dataset}:" if dataset else ""
    acc, macs = (lambda s: subset_metric("accuracy", key + s)), (lambda s: subset_metric("macs", key + s))
    subsets = [subset_name(s, channels) for s in all_subsets(channels) if acc(subset_name(s, channels)) in m]
    if not subsets:
        return None
    model = _param(p, "model.name", "?")

    def summary(kind: str, of_rows: float) -> float:  # a mixture's run summary covers every dataset: not a row's
        return of_rows if dataset else m.get(subset_metric(kind), of_rows)
    built = _model_settings(p, model)
    full = channels if channels in subsets else subsets[0]
    return {
        "run": run.info.run_name or run.info.run_id[:8], "run_id": run.info.run_id, "dataset": dataset or "",
        "model": model,
        **built,
        "dropout": _param(p, "dropout.kind", "?"), "epochs": int(float(_param(p, "train.epochs", "0"))),
        "macs": int(m.get(macs(full), 0)),
        "acc": {s: m[acc(s)] for s in subsets},
        "metrics": {s: {k: m.get(subset_metric(k, key + s)) for k in ("accuracy", "precision", "recall", "f1", "macs")}
                    for s in subsets},
        "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        "macs_by_subset": {s: int(m.get(macs(s), 0)) for s in subsets},
        MEAN_SUBSET_ACC: summary(MEAN_SUBSET_ACC, sum(m[acc(s)] for s in subsets) / len(subsets)),
        WORST_SUBSET_ACC: summary(WORST_SUBSET_ACC, min(m[acc(s)] for s in subsets)),
        "f1": m.get(subset_metric("f1", key + full), float("nan")), "full": full,
    }


def search_all_runs(client, experiment_ids: list[str], filter_string: str = "", page_size: int = 1000) -> list:
    """Every matching run, page by page (MLflow returns at most ``page_size`` per call)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=page_size, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def collect_rows(uri: str, experiments: list[str] | None = None, run_ids: list[str] | None = None,
                 filter_string: str = "", narrow: str = "--experiment/--filter") -> tuple[list[dict], object]:
    """Comparison rows of the matching runs; ``narrow`` names the caller's options that select runs (for the
    message when none match)."""
    client = mlflow_client(existing_store(uri))
    with store_errors(uri, "read runs from"):
        if run_ids:
            runs = [client.get_run(r) for r in run_ids]
        else:
            if experiments:
                exps = []
                for name in experiments:
                    exp = client.get_experiment_by_name(name)
                    if exp is None:
                        known = ", ".join(e.name for e in client.search_experiments())
                        raise DynconvError(f"no MLflow experiment {name!r} at {uri}: known experiments are {known}")
                    exps.append(exp.experiment_id)
            else:
                exps = [e.experiment_id for e in client.search_experiments()]
            runs = search_all_runs(client, exps, filter_string) if exps else []
    rows = [r for run in runs for r in run_rows(run)]
    if not rows:
        raise DynconvError(f"no runs with per-subset results (acc_<subset> metrics) match at {uri}: "
                           f"train with 'dynconv train' first, or loosen {narrow}")
    return rows, client


def sort_rows(rows: list[dict], key: str) -> list[dict]:
    subsets = list(dict.fromkeys(s for r in rows for s in r["acc"]))
    if key.startswith("acc_") and key[4:] not in subsets:
        raise DynconvError(f"cannot sort by {key!r}: the runs have {', '.join('acc_' + s for s in subsets)}")

    def value(r):
        if key.startswith("acc_"):
            return r["acc"].get(key[4:], float("-inf"))
        if key not in r:
            raise DynconvError(f"cannot sort by {key!r}: use mean_subset_acc, worst_subset_acc, f1, macs, epochs, "
                               "run, rgb_gap (with --reference) or acc_<subset>")
        return r[key]
    return sorted(rows, key=value, reverse=key not in ("run", "macs", "rgb_gap"))


def _find(rows: list[dict], key: str, option: str) -> dict:
    found = next((r for r in rows if r["run_id"].startswith(key) or r["run"] == key), None)
    if found is None:
        raise DynconvError(f"{option} {key!r} is not among the compared runs: give its run id or name")
    return found


def add_rgb_gap(rows: list[dict], reference: str) -> None:
    """``rgb_gap`` = the reference run's full-channel accuracy − each run's (the cost of robustness)."""
    ref = _find(rows, reference, "--reference")
    for r in rows:
        r["rgb_gap"] = ref["acc"][ref["full"]] - r["acc"].get(r["full"], float("nan"))


def add_deltas(rows: list[dict], baseline: str) -> None:
    """Δ columns (this run − baseline) for mean, worst and full-channel accuracy."""
    base = _find(rows, baseline, "--baseline")
    for r in rows:
        r["d_mean"] = r["mean_subset_acc"] - base["mean_subset_acc"]
        r["d_worst"] = r["worst_subset_acc"] - base["worst_subset_acc"]
        r["d_full"] = r["acc"].get(r["full"], float("nan")) - base["acc"].get(base["full"], float("nan"))


def _columns(rows: list[dict]) -> list[str]:
    subsets = []
    for r in rows:
        subsets += [s for s in r["acc"] if s not in subsets]
    info = [c for c in INFO_COLUMNS if c != "run_id"]
    if any(r.get("dataset") for r in rows):  # a mixture among the runs: which dataset each row is of
        info.insert(1, "dataset")
    cols = info + [f"acc_{s}" for s in subsets]
    cols += ["mean_subset_acc", "worst_subset_acc", "f1"]
    if "rgb_gap" in rows[0]:
        cols.append("rgb_gap")
    if "d_mean" in rows[0]:
        cols += ["d_mean", "d_worst", "d_full"]
    return cols


def _cell(r: dict, col: str, pretty: bool):
    v = r["acc"].get(col[4:]) if col.startswith("acc_") else r.get(col)
    if not pretty or v is None:
        return v
    if isinstance(v, float):
        return f"{100 * v:+.1f}" if col.startswith("d_") or col == "rgb_gap" else f"{100 * v:.1f}"
    if col == "macs":
        return f"{v / 1e6:.1f}M"
    return str(v)


def render(rows: list[dict], fmt: str) -> str:
    cols = _columns(rows)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run_id", *cols])
        for r in rows:
            w.writerow([r["run_id"], *(_cell(r, c, False) for c in cols)])
        return buf.getvalue()
    head = [header(c, rows) for c in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(_cell(r, c, True) or "") for c in cols) + " |" for r in rows]
    note = "Accuracy in %" + ("; Δ columns in points against the baseline" if "d_mean" in rows[0] else "")
    return note + ".\n\n" + "\n".join(lines) + "\n"


# the columns that say which run a row is, most telling first: the last given up when a table is narrowed
IDENTITY_COLUMNS = ("model", "stem_mode", "norm", "dropout", "stem")
# columns given up first when a table does not fit the terminal (run, the subsets, mean and worst stay):
# the read-outs of a run first, then what identifies it, the model last
DROP_ORDER = ("epochs", "macs", "f1", "d_full", "d_worst", *reversed(IDENTITY_COLUMNS))


def header(col: str, rows: list[dict]) -> str:
    """A column's heading: subsets by name; f1 and MACs say which subset they are of."""
    full = rows[0]["full"] if rows else "RGB"
    names = {"mean_subset_acc": "mean", "worst_subset_acc": "worst", "f1": f"F1 {full}", "macs": f"MACs {full}",
             "rgb_gap": "rgb_gap", "d_mean": "Δmean", "d_worst": "Δworst", "d_full": f"Δ{full}"}
    return names.get(col, col[4:] if col.startswith("acc_") else col)


def fit_columns(rows: list[dict], width: int) -> tuple[list[str], list[str]]:
    """The columns that fit ``width`` characters (and the ones left out, in the order given up), dropping by
    :data:`DROP_ORDER` — what identifies a run (:data:`IDENTITY_COLUMNS`, the model first) goes last."""
    cols = _columns(rows)

    def needed(cs):  # rich: 3 characters of padding and border per column, plus one
        return 1 + sum(3 + max(len(header(c, rows)), *(len(str(_cell(r, c, True) or "")) for r in rows)) for c in cs)
    dropped = []
    for c in DROP_ORDER:
        if needed(cols) <= width:
            break
        if c in cols:
            cols.remove(c)
            dropped.append(c)
    # the last column dropped made room: a narrower read-out given up before it may fit again (not an identifying
    # column: a table that lost the model does not keep its stem instead)
    for c in [c for c in reversed(dropped[:-1]) if c not in IDENTITY_COLUMNS]:
        kept = [x for x in _columns(rows) if x in cols or x == c]
        if needed(kept) <= width:
            cols = kept
            dropped.remove(c)
    return cols, dropped


def print_rich(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cols, dropped = fit_columns(rows, console.width)
    note = f"; {len(dropped)} column(s) left out to fit: {', '.join(dropped)} (--format csv has all)" if dropped else ""
    table = Table(title=f"{len(rows)} runs — accuracy in %{note}", title_justify="left")
    for c in cols:
        table.add_column(header(c, rows), justify="left" if c in (*INFO_COLUMNS, "dataset") else "right", no_wrap=c == "run",
                         overflow="fold")
    for r in rows:
        table.add_row(*(str(_cell(r, c, True) or "") for c in cols))
    console.print(table)


def plot_rows(rows: list[dict], client, path: Path) -> dict:
    curves = {r["run"]: sorted((h.step, h.value) for h in client.get_metric_history(r["run_id"], logged_name(VAL_ACC)))
              for r in rows}
    figure_rows = [{"label": r["run"], "accuracy": r["acc"], "macs": r["macs_by_subset"]} for r in rows]
    return subset_figure(figure_rows, path, curves=curves, title="dynconv compare")


def tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise DynconvError("no tracking store: pass --tracking-uri (e.g. sqlite:///demo-out/runs/mlruns.db) "
                           "or set MLFLOW_TRACKING_URI")
    return uri


def run_compare(uri: str | None, experiments, run_ids, filter_string: str, sort: str, fmt: str | None,
                plot: str | None, baseline: str | None, log_to: str | None, reference: str | None = None) -> str:
    uri = tracking_uri(uri)
    rows, client = collect_rows(uri, experiments, run_ids, filter_string)
    if reference:
        add_rgb_gap(rows, reference)
    rows = sort_rows(rows, sort)
    if baseline:
        add_deltas(rows, baseline)
    fmt = fmt or ("table" if os.isatty(1) else "markdown")
    text = render(rows, "markdown" if fmt == "table" else fmt)
    if fmt == "table":
        print_rich(rows)
    else:
        print(text, end="")
    files = []
    if plot:
        files.append(plot_rows(rows, client, Path(plot))["path"])
    if log_to:
        import tempfile

        from .tracking import MlflowRun

        tracker = MlflowRun.attach(uri, log_to)
        with tempfile.TemporaryDirectory() as tmp:
            md = text if fmt in ("table", "markdown") else render(rows, "markdown")
            for f in files + [atomic_write_text(Path(tmp) / "compare.md", md)]:
                tracker.log_artifact(f, "compare")
    return text
