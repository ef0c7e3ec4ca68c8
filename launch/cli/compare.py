"""``dynconv compare``: MLflow runs side by side — accuracy per channel subset against compute."""
from __future__ import annotations

import sys

from dynconv.choices import COMPARE_FORMATS

NAME = "compare"


def add_parser(sub) -> None:
    cp = sub.add_parser(NAME, help="compare MLflow runs: accuracy per channel subset vs MACs")
    cp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    cp.add_argument("--experiment", action="append", default=None, help="experiment name (repeatable)")
    cp.add_argument("--runs", nargs="+", default=None, metavar="RUN_ID")
    cp.add_argument("--filter", default="", help="MLflow filter string, e.g. \"params.model.norm = 'recalibrate'\"")
    cp.add_argument("--sort", default="worst_subset_acc")
    cp.add_argument("--format", choices=COMPARE_FORMATS, default=None,
                    help="default: table in a terminal, markdown in a pipe")
    cp.add_argument("--plot", default=None, help="write bars, accuracy-vs-MACs and learning curves (.png/.svg)")
    cp.add_argument("--baseline", default=None, help="run id (prefix) or name: adds Δ columns")
    cp.add_argument("--log-to", default=None, metavar="RUN_ID", help="log the table and plot to this run")
    cp.add_argument("--reference", default=None, metavar="RUN",
                    help="RGB-only reference run (id or name): adds rgb_gap = its RGB accuracy - each run's")
    cp.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("track")
    from ..compare import run_compare

    run_compare(a.tracking_uri, a.experiment, a.runs, a.filter, a.sort, a.format, a.plot, a.baseline, a.log_to,
                a.reference)
    if a.plot:
        print(f"wrote {a.plot}", file=sys.stderr)
    return 0
