"""``dynconv sync``: deliver a run's buffered MLflow records (after the store was unreachable)."""
from __future__ import annotations

NAME = "sync"


def add_parser(sub) -> None:
    sy = sub.add_parser(NAME, help="deliver a run's buffered MLflow records (after the store was unreachable)")
    sy.add_argument("run_dir")
    sy.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("track")
    from ..tracking import sync_run_dir

    run_id, sent, left = sync_run_dir(a.run_dir)
    print(f"run {run_id}: delivered {sent} buffered record(s), {left} left")
    return 0 if left == 0 else 1
