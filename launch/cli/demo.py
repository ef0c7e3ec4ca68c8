"""``dynconv demo``: synthesise data, convert to FFCV, train, evaluate, log to MLflow."""
from __future__ import annotations

NAME = "demo"


def add_parser(sub) -> None:
    d = sub.add_parser(NAME, help="synthesise data, convert to FFCV, train, evaluate, log to MLflow")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--train-per-class", type=int, default=300)
    d.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    d.set_defaults(func=run)


def run(a) -> int:
    from ..demo import run_demo
    from ._common import print_result

    print_result(run_demo(a.out, a.epochs, a.train_per_class, a.overrides))
    return 0
