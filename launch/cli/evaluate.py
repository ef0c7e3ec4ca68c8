"""``dynconv eval``: score a checkpoint on every channel subset of a validation set."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dynconv.errors import DynconvError

NAME = "eval"


def add_parser(sub) -> None:
    e = sub.add_parser(NAME, help="evaluate a checkpoint on channel subsets")
    e.add_argument("checkpoint", help="run.dir/model.pt, or an MLflow model: models:/NAME/VERSION, runs:/RUN_ID/model")
    e.add_argument("--tracking-uri", default=None, help="for models:/ and runs:/ (default: $MLFLOW_TRACKING_URI)")
    e.add_argument("--data", required=True, help="validation image folder or .beton file")
    e.add_argument("--subsets", default=None, help="comma-separated, e.g. RGB,RG,R (default: all)")
    e.add_argument("--dataset", default=None, help="a model trained on a mixture: which of its datasets --data is "
                   "(its channels and normalisation; default: the only one with as many channels)")
    e.add_argument("--json", default=None, help="write the results to this JSON file")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--strict", action="store_true")
    e.add_argument("--device", default="auto")
    e.add_argument("--model", default=None, help="fail unless the checkpoint holds this model")
    e.add_argument("--reference", default=None,
                   help="RGB-only reference (checkpoint or eval.json): adds rgb_gap = its accuracy - this model's")
    e.set_defaults(func=run)


@contextmanager
def checkpoint_file(name: str, tracking_uri: str | None):
    """A local checkpoint path for ``name``: itself, or an MLflow model's checkpoint downloaded for the while."""
    if not name.startswith(("models:/", "runs:/")):
        yield name
        return
    from ..mlflow_model import fetch_checkpoint, temporary_folder

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:  # MLflow would quietly create an empty ./mlflow.db and find nothing in it
        raise DynconvError(f"{name} lives in an MLflow store: pass --tracking-uri (e.g. http://127.0.0.1:5000 or "
                           "sqlite:///runs/mlruns.db) or set MLFLOW_TRACKING_URI")
    with temporary_folder() as tmp:
        yield str(fetch_checkpoint(name, tracking_uri, Path(tmp)))


def run(a) -> int:
    from ..evaluation import run_eval
    from ..report import print_table, write_reports

    with checkpoint_file(a.checkpoint, a.tracking_uri) as checkpoint:
        report = run_eval(checkpoint, a.data, a.subsets, a.batch_size, a.workers, a.strict, a.device, a.model,
                          a.reference, a.dataset)
    report["checkpoint"] = a.checkpoint
    print_table(report["subsets"], f"{report['model']} on {report['num_samples']} images of {a.data}")
    s = report["summary"]
    line = f"mean subset accuracy {100 * s['mean_subset_acc']:.2f}%, worst {100 * s['worst_subset_acc']:.2f}%"
    if "rgb_gap" in s:
        line += f", rgb_gap {100 * s['rgb_gap']:+.2f} points (reference {100 * report['reference']['accuracy']:.2f}%)"
    print(line)
    if a.json:
        write_reports(report, Path(a.json))
        print(f"wrote {a.json}")
    return 0
