"""What a partition can hold: ``sinfo``'s nodes per partition, against a job's nodes, CPUs, GPUs, memory and
walltime, checked before anything reaches ``sbatch`` (a job no partition can start would otherwise pend silently,
reason PartitionNodeLimit, ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass

from dynconv.errors import DynconvError

from . import executor
from .executor import Resources, mem_gb


def _minutes(limit: str) -> float | None:
    """Slurm time ``[D-]HH:MM:SS`` / ``MM`` / ``UNLIMITED`` -> minutes (None: no limit)."""
    if limit.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", ""):
        return None
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + s / 60


@dataclass
class Node:
    """One node of a partition as ``sinfo -N`` shows it."""

    name: str
    cpus: int
    mem_mb: int | None   # RealMemory (None: not reported)
    gpus: int            # GPUs in its gres (gpu:4, gpu:a100:4(S:0-1), ...)


@dataclass
class Partition:
    name: str
    default: bool
    time_limit: str           # as sinfo prints it (infinite, 2:00:00, 1-00:00:00)
    min_nodes: int            # a job's size limits (MinNodes/MaxNodes; None: no limit)
    max_nodes: int | None
    nodes: list[Node]


# one line per node and partition: the partition (default marked *), the node, its CPUs, memory (MB) and gres,
# the partition's time limit and job size limits (MinNodes-MaxNodes)
SINFO_FORMAT = "%P|%N|%c|%m|%G|%l|%s"


def _leading_int(text: str) -> int | None:
    m = re.match(r"\s*(\d+)", text)
    return int(m.group(1)) if m else None


def gpu_count(gres: str) -> int:
    """GPUs in a node's gres as sinfo prints it: ``gpu:4``, ``gpu:a100:4(S:0-1)``, ``gpu:a100:2,gpu:v100:2``,
    ``gpu:2,mps:200``, ``(null)``."""
    return sum(int(m.group(1)) for m in re.finditer(r"(?:^|,)gpu(?::[^:,()]+)?:(\d+)", gres.strip()))


def parse_sinfo(text: str) -> dict[str, Partition]:
    """``sinfo -h -N -o SINFO_FORMAT`` -> the partitions, in sinfo's order, with their nodes."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.strip().split("|")
        if len(fields) != 7:
            raise DynconvError(f"unexpected sinfo output {line.strip()[:80]!r}: is this Slurm 20.02 or newer?")
        name, node, cpus, mem, gres, limit, size = fields
        default, name = name.endswith("*"), name.rstrip("*")
        low, _, high = size.partition("-")
        part = partitions.setdefault(name, Partition(name, default, limit.strip(), _leading_int(low) or 0,
                                                     _leading_int(high), []))
        part.nodes.append(Node(node, _leading_int(cpus) or 0, _leading_int(mem), gpu_count(gres)))
    return partitions


def _n(count: float, what: str) -> str:
    count = int(count) if float(count).is_integer() else count
    return f"{count} {what}" + ("" if count == 1 else "s")


def _mem_text(mb: float) -> str:
    return f"{mb / 1024:.3g}G" if mb >= 1024 else f"{mb:.0f}M"


def job_shape(res: Resources) -> str:
    """What the job asks of a partition, in words: ``2 nodes, 1 task x 1 CPU per node, 60 min``."""
    tasks = res.generic_parameters()["tasks_per_node"]
    parts = [_n(res.nodes, "node"), f"{_n(tasks, 'task')} x {_n(res.cpus_per_task, 'CPU')} per node"]
    if res.gpus_per_node:
        parts.append(f"{_n(res.gpus_per_node, 'GPU')} per node")
    if res.mem:
        parts.append(f"{res.mem} per node")
    return ", ".join([*parts, f"{res.time_min} min"])


def cannot_hold(part: Partition, res: Resources) -> str | None:
    """Why ``part`` can never start the job (its size, a node's CPUs/GPUs/memory, the time limit), or None.
    What is checked is what the partition *has*, not what is free now: a busy partition still holds the job."""
    if part.max_nodes is not None and res.nodes > part.max_nodes:
        return f"it allows at most {_n(part.max_nodes, 'node')} per job (MaxNodes)"
    if res.nodes < part.min_nodes:
        return f"it needs at least {_n(part.min_nodes, 'node')} per job (MinNodes)"
    if res.nodes > len(part.nodes):
        return f"it has {_n(len(part.nodes), 'node')}"
    limit = _minutes(part.time_limit)
    if limit is not None and res.time_min > limit:
        return f"--time {res.time_min} min exceeds its limit of {part.time_limit}"
    tasks = res.generic_parameters()["tasks_per_node"]
    cpus, gpus = tasks * res.cpus_per_task, res.gpus_per_node
    mem_mb = mem_gb(res.mem) * 1024 if res.mem else None
    needs = [  # (what a node must have, does this node have it, what the partition's best node has)
        (f"{_n(cpus, 'CPU')} ({_n(tasks, 'task')} x {_n(res.cpus_per_task, 'CPU')})", lambda nd: nd.cpus >= cpus,
         lambda: f"at most {_n(max(nd.cpus for nd in part.nodes), 'CPU')}"),
        (_n(gpus, "GPU"), lambda nd: nd.gpus >= gpus,
         lambda: f"at most {_n(max(nd.gpus for nd in part.nodes), 'GPU')}".replace("at most 0 GPUs", "no GPUs")),
        (f"{res.mem} of memory", lambda nd: mem_mb is None or nd.mem_mb is None or nd.mem_mb >= mem_mb,
         lambda: f"at most {_mem_text(max(nd.mem_mb or 0 for nd in part.nodes))} of memory"),
    ]
    for what, has, best in needs:
        having = sum(1 for nd in part.nodes if has(nd))
        if having < res.nodes:
            return (f"its nodes have {best()}, the job needs {what} per node" if having == 0 else
                    f"only {_n(having, 'node')} of its {len(part.nodes)} {'has' if having == 1 else 'have'} {what}")
    having = sum(1 for nd in part.nodes if all(has(nd) for _, has, _ in needs))
    if having < res.nodes:  # enough nodes with the CPUs, with the GPUs, ..., but not with all of them at once
        asked = [needs[0][0], *([needs[1][0]] if gpus else []), *([needs[2][0]] if mem_mb is not None else [])]
        return f"only {_n(having, 'node')} of its {len(part.nodes)} {'has' if having == 1 else 'have'} " \
            f"{' and '.join(asked)}"
    return None


def capacity(part: Partition) -> str:
    """A partition's size in words, for an error line: ``multi: 2 nodes of 1 CPU``."""
    if not part.nodes:
        return f"{part.name}: no nodes"
    text = f"{part.name}: {_n(len(part.nodes), 'node')} of {_n(max(nd.cpus for nd in part.nodes), 'CPU')}"
    gpus = max(nd.gpus for nd in part.nodes)
    if gpus:
        text += f" + {_n(gpus, 'GPU')}"
    if part.max_nodes is not None and part.max_nodes < len(part.nodes):
        text += f", MaxNodes {part.max_nodes}"
    if _minutes(part.time_limit) is not None:
        text += f", limit {part.time_limit}"
    return text


def fit_partitions(partitions: dict[str, Partition], res: Resources) -> tuple[list[str], list[tuple[str, str]]]:
    """The partitions of ``--partition`` (a name, Slurm's comma list, or none: the default one) that can hold the
    job, in the order given, and those left out with why. None: one line naming the partitions that can."""
    given = res.partition is not None
    names = [p.strip() for p in res.partition.split(",") if p.strip()] if given else \
        [p.name for p in partitions.values() if p.default][:1]
    if not names:
        if given:
            raise DynconvError(f"--partition {res.partition!r} names no partition: this cluster has "
                               f"{', '.join(sorted(partitions))}")
        return [], []  # no default partition: Slurm decides (and refuses the job itself)
    for name in names:
        if name not in partitions:
            raise DynconvError(f"unknown partition {name!r}: this cluster has {', '.join(sorted(partitions))}")
    why = {name: cannot_hold(partitions[name], res) for name in names}
    fit = [name for name in names if why[name] is None]
    if fit:
        return fit, [(name, why[name]) for name in names if why[name] is not None]
    if len(names) == 1:
        head = f"{'partition' if given else 'the default partition'} {names[0]} cannot hold the job " \
               f"({job_shape(res)}): {why[names[0]]}"
    else:
        head = f"none of --partition {res.partition} can hold the job ({job_shape(res)}): " + \
            "; ".join(f"{name}: {why[name]}" for name in names)
    others = [p for p in partitions.values() if p.name not in names]
    can = [p.name for p in others if cannot_hold(p, res) is None]
    if can:
        tail = f"it fits partition {can[0]} (--partition {can[0]})" if len(can) == 1 else \
            f"it fits partitions {', '.join(can)} (--partition {','.join(can)}, or one of them)"
    elif others:
        tail = f"no other partition can either ({'; '.join(capacity(p) for p in others)})"
    else:
        tail = "this cluster has no other partition"
    raise DynconvError(f"{head}; {tail}")


def check_against_cluster(res: Resources) -> list[tuple[str, str]]:
    """The partition exists (default: the cluster's default) and can hold the job: nodes (and MaxNodes), tasks x
    CPUs, GPUs and memory per node, the walltime. Of a list (``debug,multi``), those that cannot are dropped from
    ``res.partition`` (returned with why), so Slurm starts the job on whichever of the others has room first;
    none: one line naming the partitions that can. A job the default partition cannot hold is refused, not sent
    elsewhere: a partition the user did not name can bring other accounting or QOS."""
    partitions = parse_sinfo(executor._slurm_query(["sinfo", "-h", "-N", "-o", SINFO_FORMAT]))
    fit, dropped = fit_partitions(partitions, res)
    if dropped:
        res.partition = ",".join(fit)
    return dropped
