"""Handing callables to submitit: checks of the resources against the cluster, one submission folder per
``dispatch`` (0700: the frozen inputs, submitit's pickles and logs, ``submission.json``), and the sweep job.
What a job runs is built by the caller (``dynconv.launch.submission`` for trainings and commands); nothing here
knows a training config."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from dynconv.errors import DynconvError

from .executor import Resources, check_against_cluster, make_executor, sbatch_script
from .submissions import new_submission_dir, write_record


def check_resources(res: Resources, cluster: str) -> None:
    """What was asked is possible (on Slurm: the partition exists, the walltime is within its limit), before
    anything is written."""
    res.check()
    if cluster == "slurm":
        check_against_cluster(res)


def dry_run_script(res: Resources, root: Path, array_size: int | None = None) -> dict:
    """What ``--dry-run`` prints: the sbatch script a submission would get."""
    return {"script": sbatch_script(root / f"<timestamp>-{res.name}" / "logs", res, array_size)}


def submit_sweep(run_sweep: Callable[..., dict], sweep_kwargs: dict, res: Resources, *, cluster: str, root: Path,
                 dry_run: bool = False) -> dict:
    """Run ``run_sweep(**sweep_kwargs)`` (the sweep's entry point, handed over by the caller) in one job: Ray
    head on the first node, workers on the others (one task per node)."""
    from .ray_job import SweepJob

    check_resources(res, cluster)
    res.tasks_per_node, res.task_per_gpu = 1, False  # one Ray node per Slurm node; Ray places trials on its GPUs
    if dry_run:
        return dry_run_script(res, root)
    what = f"sweep {Path(sweep_kwargs['out']).name}"
    return dispatch(lambda folder: ([SweepJob(str(folder), run_sweep, sweep_kwargs)],
                                    [{"what": what, "config": sweep_kwargs.get("config"), "run_dir": None,
                                      "sweep_dir": str(sweep_kwargs["out"])}]),
                    res, cluster, root, array=False, meta={"sweep": sweep_kwargs})


def dispatch(calls_for, res: Resources, cluster: str, root: Path, *, array: bool, meta: dict) -> dict:
    """Create the submission folder, build the callables in it (``calls_for(folder) -> (calls, entries)``),
    submit them (as one array job if ``array``), record the submission. Nothing submitted: no folder left."""
    folder = new_submission_dir(root, res.name)
    try:
        calls, entries = calls_for(folder)
        ex = make_executor(folder / "logs", cluster, res)
        try:
            jobs = ex.submit_array(calls) if array else [ex.submit(calls[0])]
        except Exception as e:  # sbatch's own refusal (bad account/qos/constraint, ...)
            lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or str(e).splitlines() or [repr(e)]
            raise DynconvError(f"the scheduler refused the job: {lines[-1].strip()[:200]}") from None
    except BaseException:
        if not any(folder.joinpath("logs").glob("*")):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # nothing was submitted: leave no trace
        raise
    for job, entry in zip(jobs, entries):
        entry["job_id"] = str(job.job_id)
    record = {"submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "cluster": cluster, **meta,
              "resources": res.__dict__, "executor_folder": str(folder / "logs"), "jobs": entries}
    write_record(folder, record)
    return {"folder": folder, "jobs": jobs, "record": record}
