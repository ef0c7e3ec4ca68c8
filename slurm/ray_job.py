"""A Ray Tune sweep inside a Slurm job: task 0 starts a Ray head on the first node and drives the sweep;
the other tasks (one per further node) join as Ray workers and leave when the sweep is done.

Ray does not read Slurm's limits, so each node offers Ray exactly the job's CPUs/GPUs on it; each job
gets its own ports (derived from the job id) and its own Ray temp dir, so sweeps from several jobs can
share a node. The callable is ``Checkpointable``: when the job is pre-empted it is requeued as-is and
the sweep continues from Ray Tune's saved state (``Tuner.restore``; finished trials are not re-run).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import submitit

from dynconv.errors import DynconvError

DONE = "ray_sweep.done"
HEAD = "ray_head_address"
TOKEN = "ray_auth_token"


def _ports(job_id: str) -> dict[str, int]:
    base = 20000 + (int("".join(c for c in str(job_id) if c.isdigit()) or 0) % 400) * 100
    return {"port": base, "node_manager_port": base + 1, "object_manager_port": base + 2,
            "min_worker_port": base + 10, "max_worker_port": base + 99}


def _node_resources(env: submitit.JobEnvironment) -> list[str]:
    tasks_here = max(1, env.num_tasks // max(1, env.num_nodes))
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", os.cpu_count() or 1)) * tasks_here
    gpus = len([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()])
    return [f"--num-cpus={cpus}", f"--num-gpus={gpus}"]


def _start(args: list[str], tmp: Path) -> subprocess.Popen:
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray) if ray.exists() else "ray", "start", "--block", "--disable-usage-stats",
           f"--temp-dir={tmp}", *args]
    return subprocess.Popen(cmd, start_new_session=True, stdout=sys.stdout, stderr=sys.stderr)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


class SweepJob(submitit.helpers.Checkpointable):
    """``run_sweep(**kwargs)`` (the sweep's entry point, handed over by the caller) on a Ray cluster made of
    this job's nodes."""

    def __init__(self, folder: str, run_sweep: Callable[..., dict], sweep_kwargs: dict):
        self.folder, self.run_sweep, self.kwargs = folder, run_sweep, dict(sweep_kwargs)

    def __call__(self) -> dict | None:
        env = submitit.JobEnvironment()
        folder = Path(self.folder)
        ports = _ports(env.job_id)
        head_file = folder / HEAD
        tmp = Path("/tmp") / f"ray_{env.job_id}"[:40]
        token_file = folder / TOKEN
        if env.global_rank == 0:
            (folder / DONE).unlink(missing_ok=True)
            head_file.unlink(missing_ok=True)
            if not token_file.exists():
                fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, secrets.token_hex(32).encode())
                os.close(fd)
        else:
            deadline = time.time() + 120
            while not token_file.exists() and time.time() < deadline:
                time.sleep(1)
        # token authentication for this job's Ray cluster (head, workers and driver share the 0600 token file)
        os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token_file.read_text().strip()})
        import ray.util  # only now: Ray reads RAY_AUTH_MODE when it is imported

        port_args = [f"--{k.replace('_', '-')}={v}" for k, v in ports.items() if k != "port"]
        if env.global_rank != 0:  # a worker node: serve Ray until the driver says the sweep is over
            deadline = time.time() + 120
            while not head_file.exists() and time.time() < deadline:
                time.sleep(1)
            head = head_file.read_text().strip()
            _wait_for(head)
            proc = _start([f"--address={head}", *port_args, *_node_resources(env)], tmp)
            try:
                while not (folder / DONE).exists() and proc.poll() is None:
                    time.sleep(2)
            finally:
                _stop(proc)
            return None
        ip = ray.util.get_node_ip_address()  # the address Ray itself picks for this node (and its drivers)
        head = f"{ip}:{ports['port']}"
        proc = _start(["--head", f"--node-ip-address={ip}", f"--port={ports['port']}", "--include-dashboard=false",
                       *port_args, *_node_resources(env)], tmp)
        head_file.write_text(head)
        try:
            _wait_for(head)
            # a requeued job continues its sweep from Tune's saved state
            result = self.run_sweep(**self.kwargs, resume="auto", ray_address=head)
        finally:
            (folder / DONE).touch()
            _stop(proc)
        return {"status": result["status"], "best_config": result["best_config"], "out": result["out"],
                "parent_run_id": result["parent_run_id"], "summary": result["summary"]}

def _wait_for(address: str, timeout: float = 90) -> None:
    """Until the Ray head's GCS port accepts connections."""
    import socket

    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                time.sleep(1)  # accepting, give it a moment to finish starting
                return
        except OSError:
            time.sleep(1)
    raise DynconvError(f"the Ray head at {address} started by this job did not come up in {timeout:.0f} s")
