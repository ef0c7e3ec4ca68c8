"""Resources -> a submitit executor (Slurm, local processes, or in-process debug), checked before submission.

Resources a user can get wrong (a walltime shorter than the pre-emption signal needs, a size that is not one)
fail here with one line, before anything reaches ``sbatch``; what the cluster's partitions can hold is checked
in :mod:`.partitions`.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dynconv.choices import CLUSTERS
from dynconv.errors import DynconvError

MIN_RUNTIME_S = 60  # a job needs at least this long between start-up and the pre-emption signal


@dataclass
class Resources:
    """What ``dynconv submit`` asks the scheduler for (one task per GPU, or ``tasks_per_node`` on CPUs)."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str | None = None          # e.g. 16G, 512M
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    max_parallel: int | None = None  # array jobs: elements running at once
    signal_delay_s: int = 120        # USR2 this long before the time limit: checkpoint + requeue
    name: str = "dynconv"
    task_per_gpu: bool = True        # data-parallel training: one task per GPU; a Ray node: one task per node

    def check(self) -> None:
        for key in ("nodes", "tasks_per_node", "cpus_per_task", "time_min"):
            if getattr(self, key) < 1:
                raise DynconvError(f"--{key.replace('_', '-').replace('-min', '')} must be at least 1")
        if self.gpus_per_node < 0:
            raise DynconvError("--gpus-per-node must be 0 or more")
        if self.time_min * 60 < self.signal_delay_s + MIN_RUNTIME_S:
            raise DynconvError(
                f"walltime --time {self.time_min} min is too short: Slurm sends the checkpoint signal "
                f"{self.signal_delay_s} s before the limit and a run needs ~{MIN_RUNTIME_S} s to start; use --time "
                f"{-(-(self.signal_delay_s + MIN_RUNTIME_S) // 60)} or more (or a smaller --signal-delay)")
        mem_gb(self.mem)

    def generic_parameters(self) -> dict:
        """submitit ``AutoExecutor.update_parameters`` keywords (``slurm_*`` ones are ignored elsewhere)."""
        tasks = max(self.tasks_per_node, self.gpus_per_node if self.task_per_gpu else 1)
        params = {"name": self.name, "timeout_min": self.time_min, "nodes": self.nodes, "tasks_per_node": tasks,
                  "cpus_per_task": self.cpus_per_task, "slurm_signal_delay_s": self.signal_delay_s}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem:
            params["mem_gb"] = mem_gb(self.mem)
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        if self.max_parallel:
            params["slurm_array_parallelism"] = self.max_parallel
        return params


def mem_gb(mem: str | None) -> float | None:
    if mem is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", mem, re.IGNORECASE)
    if not m:
        raise DynconvError(f"--mem {mem!r} is not a size: use e.g. 16G or 512M")
    scale = {"": 1 / 1024, "K": 1 / 1024 ** 2, "M": 1 / 1024, "G": 1, "T": 1024}[m.group(2).upper()]
    return float(m.group(1)) * scale


def default_cluster() -> str:
    """``slurm`` where ``sbatch`` is on PATH, else ``local`` (processes on this machine)."""
    return "slurm" if shutil.which("sbatch") else "local"


def _slurm_query(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout
    except FileNotFoundError:
        raise DynconvError(f"'{argv[0]}' not found: is Slurm installed here? (slurm/cluster/local-cluster.sh up starts a "
                           "local one; --cluster local runs without Slurm)") from None
    except subprocess.CalledProcessError as e:
        first = (e.stderr or e.stdout or "").strip().splitlines()
        raise DynconvError(f"'{' '.join(argv)}' failed: {first[0] if first else e.returncode} (is slurmctld up? "
                           "slurm/cluster/local-cluster.sh status)") from None
    except subprocess.TimeoutExpired:
        raise DynconvError(f"'{' '.join(argv)}' did not answer in 30 s: is slurmctld up?") from None


def make_executor(folder: Path, cluster: str, res: Resources):
    import submitit

    if cluster not in CLUSTERS:
        raise DynconvError(f"--cluster {cluster!r}: choose one of {', '.join(CLUSTERS)}")
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=3)
    ex.update_parameters(**res.generic_parameters())
    return ex


def sbatch_script(folder: Path, res: Resources, array_size: int | None = None) -> str:
    """The exact sbatch script ``dynconv submit`` would send (submitit's own renderer), without a cluster."""
    from submitit.core.core import PicklingExecutor
    from submitit.slurm.slurm import SlurmExecutor

    class OfflineSlurmExecutor(SlurmExecutor):  # SlurmExecutor minus its "is srun on PATH?" check
        def __init__(self, folder: Path) -> None:
            PicklingExecutor.__init__(self, folder, max_num_timeout=3)
            self.python = shlex.quote(sys.executable)

    ex = OfflineSlurmExecutor(folder)
    params = res.generic_parameters()
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    native = {**ex._convert_parameters(generic), **{k[6:]: v for k, v in params.items() if k.startswith("slurm_")}}
    if array_size:
        native["map_count"] = array_size
    ex.parameters.update(native)
    return ex._make_submission_file_text(ex._submitit_command_str, "dry-run")


