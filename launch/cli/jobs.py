"""``dynconv jobs``: every submission — job id, state (sacct), MLflow run, run folder."""
from __future__ import annotations

from pathlib import Path

NAME = "jobs"


def add_parser(sub) -> None:
    jb = sub.add_parser(NAME, help="list submitted jobs: id, state, MLflow run, run folder")
    jb.add_argument("--folder", default="jobs")
    jb.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("slurm")
    from dynconv.slurm.submissions import job_rows

    rows = job_rows(Path(a.folder))
    if not rows:
        print(f"no submissions in {a.folder}/ yet ('dynconv submit' puts them there; --folder to look elsewhere)")
        return 0
    cols = ("job", "state", "cluster", "mlflow_run", "what", "run_dir", "submitted")
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0
