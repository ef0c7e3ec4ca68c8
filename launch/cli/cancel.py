"""``dynconv cancel``: cancel a submitted Slurm job."""
from __future__ import annotations

from pathlib import Path

NAME = "cancel"


def add_parser(sub) -> None:
    cn = sub.add_parser(NAME, help="cancel a submitted Slurm job")
    cn.add_argument("job_id")
    cn.add_argument("--folder", default="jobs")
    cn.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("slurm")
    from dynconv.slurm.submissions import cancel_job

    cancel_job(Path(a.folder), a.job_id)
    print(f"cancelled {a.job_id}")
    return 0
