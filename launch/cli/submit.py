"""``dynconv submit``: a training (or any other dynconv command) as a Slurm job, through submitit."""
from __future__ import annotations

from pathlib import Path

from ._common import add_resource_args

NAME = "submit"
# commands that manage jobs themselves make no sense inside one
NOT_IN_A_JOB = {"submit", "jobs", "logs", "cancel"}


def add_parser(sub) -> None:
    sb = sub.add_parser(NAME, help="submit a training (or any dynconv command) to Slurm via submitit")
    sb.add_argument("--config", default=None, help="training config (YAML)")
    sb.add_argument("--run", default=None, metavar="'COMMAND ...'",
                    help="instead of training: a dynconv command line to run in the job, e.g. 'ablate --config c.yaml --out abl'")
    add_resource_args(sb)
    sb.add_argument("--array", default=None, metavar="FILE.yaml", help="YAML list of override sets: one array element each")
    sb.add_argument("--max-parallel", type=int, default=None, help="array elements running at once")
    sb.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    sb.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("slurm")
    from dynconv.slurm.executor import default_cluster

    from ..submission import submit
    from ._common import report_submission, resources

    cluster = a.cluster or default_cluster()
    out = submit(a.config, a.overrides, resources(a), cluster=cluster, root=Path(a.folder), array_file=a.array,
                 command=a.run, dry_run=a.dry_run, cli=a.cli_main,
                 commands=[c for c in a.cli_commands if c not in NOT_IN_A_JOB])
    return report_submission(out, a, cluster)
