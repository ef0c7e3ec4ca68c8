"""Process groups for data-parallel training: environment-variable rendezvous (torchrun, Slurm/submitit,
DeepSpeed's launcher all set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT)."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a one-process rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(use_cuda: bool, always: bool = False) -> DistInfo:
    """Join the process group described by the environment (NCCL on CUDA, gloo on CPU); a single process
    without those variables gets ``DistInfo()``, and with ``always`` (DeepSpeed needs a process group even
    for one process) a one-process group on 127.0.0.1 and a free port."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not always:
        return DistInfo()
    if world <= 1 and not dist.is_initialized():
        for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any data-parallel process (all processes get the same answer)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def shutdown() -> None:
    """Leave the process group before the process exits (a gloo/NCCL group torn down at interpreter exit
    can abort a rank with std::terminate while its background threads still run)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` or a DeepSpeed engine (or the model itself)."""
    if isinstance(model, nn.parallel.DistributedDataParallel) or type(model).__module__.startswith("deepspeed."):
        return model.module
    return model
