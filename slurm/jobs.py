"""The callables a Slurm job runs. Both are ``submitit.helpers.Checkpointable``: on pre-emption or time-out
(Slurm sends USR2 ``--signal-delay`` seconds ahead) submitit calls ``checkpoint()`` on global rank 0 and
requeues the job with the returned submission — the same callable, whose training resumes from the run's own
checkpoints and keeps logging to the run it recorded. What they run is handed over by the caller (as
submitit receives callables): a job never imports the application or the command line.

:class:`TrainJob` stops *cooperatively*: USR2 only sets a flag; the trainer sees it before the next step,
writes a mid-epoch checkpoint (all data-parallel ranks agree on the step), and only then hands over to
submitit's handler. No epoch is lost or repeated, and the resumed run ends bitwise where an uninterrupted
one would.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable

import submitit

from dynconv.errors import DynconvError
from dynconv.train import Callback, TrainingPreempted


def _distributed_env() -> submitit.JobEnvironment:
    """Export torch's env:// rendezvous (MASTER_ADDR = first node, a port derived from the job id, RANK,
    WORLD_SIZE, LOCAL_RANK) for multi-task jobs and size CPU threads to the task's CPUs."""
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        # overwrite: values inherited from the submitting process (sbatch exports its environment; a job
        # submitted from a torchrun worker or another job carries that one's MASTER_ADDR/RANK) are not this job's
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        print(f"rank {env.global_rank}/{env.num_tasks} on {env.hostname} ({host_address(env.hostname)}), node "
              f"{env.node}/{env.num_nodes}; rendezvous {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}", flush=True)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:
        import torch

        torch.set_num_threads(int(cpus))
    return env


def host_address(hostname: str) -> str:
    """The address ``hostname`` resolves to here (the one gloo/NCCL bind to), or ``?``."""
    import socket

    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "?"


def job_tags(env: submitit.JobEnvironment) -> dict[str, str]:
    tags = {"slurm.job_id": str(env.job_id), "slurm.cluster": env.name()}
    if env.array_job_id:
        tags.update({"slurm.array_job_id": str(env.array_job_id), "slurm.array_task_id": str(env.array_task_id)})
    return tags


class PreemptionSignal(Callback):
    """Slurm's USR2 (``--signal-delay`` seconds before the time limit, or on pre-emption) only sets a flag;
    the trainer sees it before its next step (every rank at the same step) and stops with a checkpoint."""

    def __init__(self, signum: int):
        self.flag = threading.Event()
        signal.signal(signum, lambda _signum, _frame: self.flag.set())

    def should_stop(self) -> bool:
        return self.flag.is_set()


class TrainJob(submitit.helpers.Checkpointable):
    """A training inside a job: ``train(tags=..., hooks=...)`` (handed over by the caller, e.g. the
    application's training of a frozen config) must continue its run folder when called again, since the job
    is resubmitted as-is on pre-emption; it gets the job's tags and the pre-emption hook."""

    def __init__(self, train: Callable[..., dict]):
        self.train = train

    def __call__(self) -> dict:
        env = _distributed_env()
        usr_sig = submitit.JobEnvironment._usr_sig()
        submitit_handler = signal.getsignal(usr_sig)
        preemption = PreemptionSignal(usr_sig)
        try:
            result = self.train(tags=job_tags(env), hooks=[preemption])
        except TrainingPreempted as e:
            print(f"dynconv: pre-empted at epoch {e.epoch} step {e.step}; checkpoint {e.checkpoint}", flush=True)
            if callable(submitit_handler):
                submitit_handler(usr_sig, None)  # rank 0: checkpoint() + requeue + exit; other ranks return
            return {"preempted": True, "rank": env.global_rank, "epoch": e.epoch, "step": e.step}
        report = result.get("report")
        return {"rank": env.global_rank, "world": env.num_tasks, "host": env.hostname, "run_dir": result["run_dir"],
                "run_id": result.get("run_id"), "summary": report["summary"] if report else None}


class CliJob(submitit.helpers.Checkpointable):
    """Any other ``dynconv`` command (eval, ablate, calibrate, ...) inside a job: ``cli(argv)`` is the
    command line's entry point, handed over by the caller (the job never imports the CLI). Requeued as-is:
    ``ablate`` reuses the cells it finished; other commands are idempotent re-runs."""

    def __init__(self, cli: Callable[[list[str]], int], argv: list[str]):
        self.cli, self.argv = cli, list(argv)

    def __call__(self) -> int:
        _distributed_env()
        rc = self.cli(self.argv)
        if rc != 0:
            raise DynconvError(f"'dynconv {' '.join(self.argv)}' exited with status {rc}")
        return rc
