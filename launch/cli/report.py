"""``dynconv report --study``: the original study's tables from runs tagged ``run.tags.study=ROLE``."""
from __future__ import annotations

import sys

NAME = "report"


def add_parser(sub) -> None:
    rp = sub.add_parser(NAME, help="render the study's tables from runs tagged run.tags.study=ROLE")
    rp.add_argument("--study", action="store_true", help="the original study's three tables")
    rp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    rp.add_argument("--experiment", action="append", default=None)
    rp.add_argument("--out", default=None, help="also write the Markdown to this file")
    rp.set_defaults(func=run)


def run(a) -> int:
    from dynconv.errors import DynconvError
    from dynconv.extras import require
    from dynconv.fileio import atomic_write_text

    if not a.study:
        raise DynconvError("dynconv report needs --study (the only report so far)")
    require("track")
    from ..compare import collect_rows, tracking_uri
    from ..study_report import study_report

    rows, _ = collect_rows(tracking_uri(a.tracking_uri), a.experiment, narrow="--experiment")
    text = study_report(rows)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out}", file=sys.stderr)
    print(text, end="")
    return 0
