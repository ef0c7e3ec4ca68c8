"""``dynconv logs``: a submitted job's output."""
from __future__ import annotations

import sys
from pathlib import Path

NAME = "logs"


def add_parser(sub) -> None:
    lg = sub.add_parser(NAME, help="print a submitted job's output")
    lg.add_argument("job_id")
    lg.add_argument("--folder", default="jobs")
    lg.add_argument("--task", type=int, default=0, help="task (rank) whose log to show")
    lg.add_argument("--stderr", action="store_true", help="the error stream instead of stdout")
    lg.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("slurm")
    from dynconv.errors import DynconvError

    from dynconv.slurm.submissions import find_job, log_path

    rec, job = find_job(Path(a.folder), a.job_id)
    path = log_path(rec, job, a.task, a.stderr)
    if not path.exists():
        raise DynconvError(f"job {a.job_id} has no log {path.name} yet (still pending?): try again, or "
                           f"'dynconv jobs --folder {a.folder}'")
    sys.stdout.write(path.read_text(errors="replace"))
    return 0
