"""Submission folders: one per ``dynconv submit``, mode 0700, holding the frozen config(s), submitit's
pickles and logs (``logs/``), the run folder(s) and ``submission.json``; read back by ``dynconv jobs``,
``dynconv logs`` and ``dynconv cancel``."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.run_files import recorded_mlflow_run

RECORD = "submission.json"


def new_submission_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = root / (f"{stamp}-{name}" if i == 0 else f"{stamp}-{name}-{i}")
        try:
            path.mkdir(mode=0o700)
            return path
        except FileExistsError:
            continue
    raise DynconvError(f"cannot create a submission folder in {root}")


def write_record(folder: Path, record: dict) -> Path:
    return atomic_write_text(folder / RECORD, json.dumps(record, indent=2, default=_jsonable))


def _jsonable(value):
    """Option dataclasses (e.g. a sweep's options) as their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot record a {type(value).__name__} in {RECORD}")


def read_records(root: Path) -> list[dict]:
    """Every submission under ``root``, oldest first (``folder`` added to each)."""
    if not root.is_dir():
        return []  # nothing submitted yet
    records = []
    for f in sorted(root.glob(f"*/{RECORD}")):
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rec["folder"] = str(f.parent)
        records.append(rec)
    return records


def find_job(root: Path, job_id: str) -> tuple[dict, dict]:
    """(submission record, job entry) for ``job_id`` (``123`` or array element ``123_4``)."""
    for rec in read_records(root):
        for job in rec["jobs"]:
            if job["job_id"] == job_id:
                return rec, job
    raise DynconvError(f"no job {job_id} in {root}: 'dynconv jobs --folder {root}' lists the submitted ones")


def _job(rec: dict, job_id: str, task: int = 0):
    """The submitted job through submitit's public API (state, paths, cancel)."""
    import submitit

    folder = rec["executor_folder"]
    if rec["cluster"] == "slurm":
        return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=(task,))
    return submitit.local.local.LocalJob(folder=folder, job_id=job_id, tasks=(task,))


def job_state(rec: dict, job: dict) -> str:
    """Slurm's state (sacct, through submitit's watcher); a local or debug job's from its result file."""
    handle = _job(rec, job["job_id"])
    if rec["cluster"] == "slurm":
        state = handle.state
        if state not in ("UNKNOWN", "NO PROCESS AND NO RESULT"):
            return state.split()[0]
    if not handle.paths.result_pickle.exists():
        return "RUNNING?" if rec["cluster"] == "local" else "UNKNOWN"
    try:
        return "COMPLETED" if handle.exception() is None else "FAILED"
    except Exception:  # noqa: BLE001 - an unreadable result file
        return "UNKNOWN"


def mlflow_run_id(run_dir: str | None) -> str | None:
    info = recorded_mlflow_run(run_dir)
    return info["run_id"] if info else None


def job_rows(root: Path) -> list[dict]:
    rows = []
    for rec in read_records(root):
        for job in rec["jobs"]:
            state = job_state(rec, job)
            rows.append({"job": job["job_id"], "state": state, "cluster": rec["cluster"], "what": job["what"],
                         "mlflow_run": mlflow_run_id(job.get("run_dir")) or "-", "run_dir": job.get("run_dir") or "-",
                         "submitted": rec["submitted"]})
    return rows


def log_path(rec: dict, job: dict, task: int = 0, stderr: bool = False) -> Path:
    paths = _job(rec, job["job_id"], task).paths
    return paths.stderr if stderr else paths.stdout


def cancel_job(root: Path, job_id: str) -> None:
    """``scancel`` a Slurm job of a submission under ``root``."""
    rec, _ = find_job(root, job_id)
    if rec["cluster"] != "slurm":
        raise DynconvError(f"job {job_id} ran on the {rec['cluster']} executor; only Slurm jobs can be cancelled")
    try:
        _job(rec, job_id).cancel(check=True)
    except Exception as e:  # submitit raises the scancel failure as a CalledProcessError
        raise DynconvError(f"scancel {job_id} failed: {str(e).strip().splitlines()[-1][:200]}") from None
