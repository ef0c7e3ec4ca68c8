"""What the Slurm tests share: the tiny training's arguments, the submission records, a run's MLflow client,
and a bounded wait for a job's state."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from helpers import CONFIG, ROOT, TEST_WIDTH

CLUSTER_SCRIPT = ROOT / "slurm" / "cluster" / "local-cluster.sh"


def job_args(data: Path, *extra: str) -> list[str]:
    """`dynconv submit` arguments for a 2-epoch training of the tiny set (the job picks its own run.dir)."""
    return ["--config", str(CONFIG), f"data.train={data / 'train'}", f"data.val={data / 'val'}",
            "model.num_classes=4", "data.image_size=32", "train.batch_size=32", "data.num_workers=0",
            "train.epochs=2", "eval.subsets=RGB,R", f"model.width={TEST_WIDTH}", *extra]


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/submission.json"))]


def mlflow_of(run_dir: str):
    from mlflow.tracking import MlflowClient

    from dynconv.launch.tracking import default_tracking_uri

    run_id = json.loads((Path(run_dir) / "mlflow_run.json").read_text())["run_id"]
    return MlflowClient(default_tracking_uri(run_dir)), run_id


def wait_state(job_id: str, states: set[str], timeout: float = 240) -> str:
    deadline = time.time() + timeout
    state = ""
    while time.time() < deadline:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True).stdout
        state = out.split()[0] if out.split() else ""
        if state in states:
            return state
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {state!r} after {timeout} s")


def wait_for_file(path: Path, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert path.exists(), what
