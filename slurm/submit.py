"""Handing callables to submitit: checks of the resources against the cluster, one submission folder per
``dispatch`` (0700: the frozen inputs, submitit's pickles and logs, ``submission.json``), and the sweep job.
What a job runs is built by the caller (``dynconv.launch.submission`` for trainings and commands); nothing here
knows a training config."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from dynconv.errors import DynconvError

from .executor import Resources, make_executor, sbatch_script
from .partitions import check_against_cluster
from .submissions import new_submission_dir, write_record


def check_resources(res: Resources, cluster: str) -> None:
    """What was asked is possible (on Slurm: the partition exists and can hold the job — nodes, CPUs, GPUs and
    memory per node, walltime), before anything is written. Partitions of a list that cannot hold it are dropped
    from ``res.partition``, with a note on stderr."""
    res.check()
    if cluster == "slurm":
        for name, why in check_against_cluster(res):
            print(f"dynconv: partition {name} cannot hold the job ({why}): submitting to {res.partition}",
                  file=sys.stderr, flush=True)


def dry_run_script(res: Resources, root: Path, array_size: int | None = None) -> dict:
    """What ``--dry-run`` prints: the sbatch script a submission would get."""
    return {"script": sbatch_script(root / f"<timestamp>-{res.name}" / "logs", res, array_size)}


def submit_sweep(run_sweep: Callable[..., dict], sweep_kwargs: dict, res: Resources, *, cluster: str, root: Path,
                 dry_run: bool = False) -> dict:
    """Run ``run_sweep(**sweep_kwargs)`` (the sweep's entry point, handed over by the caller) in one job: Ray
    head on the first node, workers on the others (one task per node)."""
    from .ray_job import SweepJob

    res.tasks_per_node, res.task_per_gpu = 1, False  # one Ray node per Slurm node; Ray places trials on its GPUs
    check_resources(res, cluster)
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


# --wait on Slurm: a job still pending this long after it was submitted (or requeued) says why, and again at
# this interval after that; module attributes, read at each call (tests use seconds)
PENDING_FIRST_S = 60.0
PENDING_EVERY_S = 300.0

# Slurm's pending reasons that need more than patience, in words (squeue's %r; the others print as they are)
PENDING_HINTS = {
    "PartitionNodeLimit": "the partition cannot give it that many nodes: cancel it",
    "PartitionTimeLimit": "its --time exceeds the partition's limit: cancel it",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved",
    "NodeDown": "a node it needs is down",
    "JobHeldUser": "held: scontrol release {id} lets it start",
    "JobHeldAdmin": "held by an administrator",
    "BeginTime": "its start time has not come yet",
    "Dependency": "waiting for the job it depends on",
    "DependencyNeverSatisfied": "the job it depends on failed: cancel it",
    "JobArrayTaskLimit": "--max-parallel elements of the array are running",
    "Resources": "waiting for free nodes/CPUs/GPUs",
    "Priority": "other jobs are ahead of it",
}


def _say(line: str) -> None:
    print(line, flush=True)


def _pending(job_ids: Sequence[str]) -> dict[str, str] | None:
    """{job id: Slurm's reason} of the jobs of ``job_ids`` that are pending (squeue; None: squeue did not answer).
    Array elements as ``123_4``, one line each (-r)."""
    wanted = set(job_ids)
    bases = ",".join(sorted({j.split("_")[0] for j in wanted}))  # an array's id: all its elements
    argv = ["squeue", "-h", "-r", "-t", "PENDING", "-o", "%i|%r", "-j", bases]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:  # e.g. every job has left slurmctld's memory: none is pending
        return {} if "Invalid job id" in out.stderr else None
    pending = {}
    for line in out.stdout.splitlines():
        jid, _, reason = line.strip().partition("|")
        if jid in wanted:
            pending[jid] = reason.strip() or "unknown"
    return pending


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _ids_text(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 3 else f"{', '.join(ids[:2])} and {len(ids) - 2} more"


def pending_lines(due: dict[str, tuple[str, float]]) -> list[str]:
    """One line per reason for the jobs ``{id: (reason, seconds pending)}`` that are due a report."""
    by_reason: dict[str, list[str]] = {}
    for jid, (reason, _) in due.items():
        by_reason.setdefault(reason, []).append(jid)
    lines = []
    for reason, ids in by_reason.items():
        waited = max(due[j][1] for j in ids)
        hint = PENDING_HINTS.get(reason.split(",")[0].strip("()"), "")
        line = f"dynconv: {'job' if len(ids) == 1 else 'jobs'} {_ids_text(ids)} still pending after " \
               f"{_duration(waited)}: Slurm's reason is {reason}"
        lines.append(line + (f" ({hint.format(id=ids[0])})" if hint else ""))
    return lines


def wait_reporting_pending(jobs: Sequence, first_s: float | None = None, every_s: float | None = None) -> None:
    """Until every submitit job of ``jobs`` is done: a job still pending ``first_s`` (default
    ``PENDING_FIRST_S``) after it was submitted or requeued prints Slurm's reason (``squeue -o %r``), and again
    every ``every_s`` (``PENDING_EVERY_S``) while it pends; nothing waits silently."""
    first_s = PENDING_FIRST_S if first_s is None else first_s
    every_s = PENDING_EVERY_S if every_s is None else every_s
    ids = [str(j.job_id) for j in jobs]
    query_every = max(0.5, min(first_s, every_s) / 4)  # squeue: a few times per report interval, not every second
    since: dict[str, float] = {}
    next_report: dict[str, float] = {}
    next_query = 0.0
    while not all(j.done() for j in jobs):
        now = time.monotonic()
        if now >= next_query:
            next_query = now + query_every
            pending = _pending(ids)
            if pending is not None:
                for jid in list(since):
                    if jid not in pending:  # started (or ended): a later requeue starts a new count
                        del since[jid], next_report[jid]
                for jid in pending:
                    if jid not in since:
                        since[jid], next_report[jid] = now, now + first_s
                due = {jid: (pending[jid], now - since[jid]) for jid in pending if now >= next_report[jid]}
                for line in pending_lines(due):
                    _say(line)
                for jid in due:
                    next_report[jid] = now + every_s
        time.sleep(min(1.0, query_every))
