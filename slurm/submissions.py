"""Submission folders: one per ``dynconv submit``, mode 0700, holding the frozen config(s), submitit's
pickles and logs (``logs/``), the run folder(s) and ``submission.json``; read back by ``dynconv jobs``,
``dynconv logs`` and ``dynconv cancel``."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text

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
    return atomic_write_text(folder / RECORD, json.dumps(record, indent=2))


def read_records(root: Path) -> list[dict]:
    """Every submission under ``root``, oldest first (``folder`` added to each)."""
    if not root.is_dir():
        raise DynconvError(f"no submissions folder {root}: pass --folder (where 'dynconv submit' wrote them)")
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


def _sacct_states(job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        states[jid.strip()] = state.split()[0] if state else "UNKNOWN"
    return states


def _result_state(rec: dict, job: dict) -> str:
    """State of a job that Slurm does not know (local/debug executors, or purged): from submitit's result file."""
    path = Path(rec["executor_folder"]) / f"{job['job_id']}_0_result.pkl"
    if not path.exists():
        return "RUNNING?" if rec["cluster"] == "local" else "UNKNOWN"
    try:
        outcome, _ = pickle.loads(path.read_bytes())
    except Exception:
        return "UNKNOWN"
    return "COMPLETED" if outcome == "success" else "FAILED"


def mlflow_run_id(run_dir: str | None) -> str | None:
    if not run_dir:
        return None
    f = Path(run_dir) / "mlflow_run.json"
    try:
        return json.loads(f.read_text())["run_id"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def job_rows(root: Path) -> list[dict]:
    records = read_records(root)
    slurm_ids = [j["job_id"] for r in records if r["cluster"] == "slurm" for j in r["jobs"]]
    states = _sacct_states(slurm_ids)
    rows = []
    for rec in records:
        for job in rec["jobs"]:
            state = states.get(job["job_id"]) or _result_state(rec, job)
            rows.append({"job": job["job_id"], "state": state, "cluster": rec["cluster"], "what": job["what"],
                         "mlflow_run": mlflow_run_id(job.get("run_dir")) or "-", "run_dir": job.get("run_dir") or "-",
                         "submitted": rec["submitted"]})
    return rows


def log_path(rec: dict, job: dict, task: int = 0, stderr: bool = False) -> Path:
    return Path(rec["executor_folder"]) / f"{job['job_id']}_{task}_log.{'err' if stderr else 'out'}"
