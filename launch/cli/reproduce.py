"""``dynconv reproduce``: how a logged run was made (command, config, git commit), and optionally again."""
from __future__ import annotations

import os

NAME = "reproduce"


def add_parser(sub) -> None:
    r = sub.add_parser(NAME, help="print (or --run) the exact command, config and git commit of a logged run",
                       description="Print the command, config and git commit that reproduce a run, and how this "
                       "checkout differs from the one it ran from; --run trains it again in a new run folder.")
    r.add_argument("target", metavar="RUN_ID|RUN_DIR", help="a run folder (run.dir) or an MLflow run id")
    r.add_argument("--tracking-uri", default=None, help="for a run id (default: $MLFLOW_TRACKING_URI)")
    r.add_argument("--out", default=None, help="the new run folder (default: <run.dir>-reproduced)")
    r.add_argument("--run", action="store_true", help="train it again (in --out), then print its results")
    r.set_defaults(func=run)


def run(a) -> int:
    from ..reproduce import reproduce
    from ._common import print_result

    result = reproduce(a.target, a.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), a.out, a.run)
    if result is not None and result["report"] is not None:
        print_result(result)
    return 0
