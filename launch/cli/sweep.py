"""``dynconv sweep``: a Ray Tune search over the training config, tracked in MLflow; writes best.yaml."""
from __future__ import annotations

import sys
from pathlib import Path

from ._common import add_resource_args

NAME = "sweep"


def add_parser(sub) -> None:
    sw = sub.add_parser(NAME, help="hyperparameter sweep with Ray Tune (ASHA, PBT), tracked in MLflow; writes best.yaml")
    sw.add_argument("--config", default=None, help="the base config (required unless --resume)")
    sw.add_argument("--space", default=None, help="search-space YAML, e.g. sweeps/spaces/dropout.yaml")
    sw.add_argument("--scheduler", default=None, help="asha (default), pbt or fifo")
    sw.add_argument("--search", default=None, help="random (default), grid or optuna")
    sw.add_argument("--num-samples", type=int, default=None,
                    help="trials (grid: repeats of the grid); default 10, grid 1")
    sw.add_argument("--max-concurrent", type=int, default=None, help="at most K trials at once (default: as resources allow)")
    sw.add_argument("--metric", default=None, help="worst_subset_acc (default), mean_subset_acc or acc_<subset>, maximised")
    sw.add_argument("--resources-per-trial", default=None, metavar="cpu=N,gpu=M", help="default cpu=1,gpu=0")
    sw.add_argument("--grace-period", type=int, default=None, help="ASHA: epochs before a trial can be stopped (default 1)")
    sw.add_argument("--reduction-factor", type=float, default=None, help="ASHA: keep 1/F of the trials per rung (default 3)")
    sw.add_argument("--perturbation-interval", type=int, default=None,
                    help="PBT: epochs between exploit/explore steps (default train.epochs // 4)")
    sw.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    sw.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    sw.add_argument("--out", default="sweep-out", help="sweep folder (default sweep-out)")
    sw.add_argument("--ray-address", default=None, help="connect to this Ray cluster instead of starting a local one")
    sw.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    sw.add_argument("--verbose", action="store_true", help="Ray Tune's own progress tables instead of one line per trial")
    sw.add_argument("--on-slurm", action="store_true",
                    help="run the sweep as one submitit job (Ray head + workers on its nodes); takes the job options below")
    add_resource_args(sw)
    sw.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    sw.set_defaults(func=run)


def _options(a) -> dict:
    from dynconv.sweeps.spec import SweepOptions

    return SweepOptions(scheduler=a.scheduler, search=a.search, num_samples=a.num_samples,
                        max_concurrent=a.max_concurrent, metric=a.metric, resources=a.resources_per_trial,
                        grace_period=a.grace_period, reduction_factor=a.reduction_factor,
                        perturbation_interval=a.perturbation_interval, seed=a.seed)


def run(a) -> int:
    from dynconv.extras import require

    require("sweep")
    if a.on_slurm:
        return _on_slurm(a)
    from ..sweep import run_sweep

    result = run_sweep(a.out, a.config, a.space, a.overrides, _options(a), resume=a.resume, ray_address=a.ray_address,
                       verbose=0 if a.quiet else 2 if a.verbose else 1)
    print()
    print(result["summary"], end="")
    if result["parent_run_id"]:
        print(f"MLflow parent run id: {result['parent_run_id']}  (tracking URI: {result['tracking_uri']})")
    if result["status"] == "interrupted":
        done = sum(r["finished"] for r in result["rows"])
        print(f"dynconv: sweep interrupted with {done} of {len(result['rows'])} trials finished; continue it with "
              f"'dynconv sweep --out {result['out']} --resume'", file=sys.stderr)
        return 130
    return 0


def _on_slurm(a) -> int:
    """The whole sweep as one job: Ray head on the first node, workers on the others."""
    from dynconv.errors import DynconvError
    from dynconv.extras import require

    require("slurm")
    from dynconv.slurm.executor import default_cluster
    from dynconv.slurm.submit import submit_sweep

    from ..sweep import run_sweep, sweep_spec
    from ._common import report_submission, resources

    if a.ray_address:
        raise DynconvError("--on-slurm starts its own Ray cluster inside the job: drop --ray-address")
    out = Path(a.out).resolve()
    options = _options(a)
    config, space = a.config, a.space
    if not a.resume:  # every setting is checked here, before anything is submitted
        sweep_spec(out, config, space, a.overrides, options)
        config, space = str(Path(config).resolve()), str(Path(space).resolve())
    sweep_kwargs = {"out": str(out), "config": config, "space": space, "overrides": list(a.overrides),
                    "options": options}
    cluster = a.cluster or default_cluster()
    result = submit_sweep(run_sweep, sweep_kwargs, resources(a), cluster=cluster, root=Path(a.folder),
                          dry_run=a.dry_run)
    return report_submission(result, a, cluster)
