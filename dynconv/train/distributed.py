"""Process groups for data-parallel training: environment-variable rendezvous (torchrun, Slurm/submitit,
DeepSpeed's launcher all set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT)."""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DynconvError


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
    if world > 1:
        die_with_launcher()
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


def is_multi_process() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def same_error_everywhere():
    """Around set-up that may fail on some processes only (a check that only the main process makes, a file
    one rank cannot read): every process raises the same one-line error, instead of the others blocking in
    their next collective. The block itself must not run collectives."""
    error: DynconvError | None = None
    try:
        yield
    except DynconvError as e:
        error = e
    if not is_multi_process():
        if error is not None:
            raise error
        return
    messages: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else str(error))
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        raise error if error is not None and str(error) == first else DynconvError(first)


def die_with_launcher() -> None:
    """A data-parallel worker ends as soon as the process that launched it is gone, also after a SIGKILL or
    the OOM killer (torchrun starts each worker in a session of its own, so nothing else would stop it):
    a daemon thread waits on a pidfd of torchrun's agent (our parent; ``dynconv train --nproc`` is that
    agent) and of ``DYNCONV_LAUNCHER_PID`` if set (a wrapper above the agent), then kills this process."""
    pids = set()
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        pids.add(os.getppid())
    if os.environ.get("DYNCONV_LAUNCHER_PID", "").isdigit():
        pids.add(int(os.environ["DYNCONV_LAUNCHER_PID"]))
    fds = []
    for pid in pids - {1}:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:  # already gone
            os.kill(os.getpid(), signal.SIGKILL)
        except (OSError, AttributeError):  # no pidfds (old kernel, not Linux): no watchdog
            pass
    if not fds:
        return

    def watch() -> None:
        select.select(fds, [], [])  # a pidfd turns readable when its process exits
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="dynconv-launcher-watch").start()


class PeerFailed(DynconvError):
    """A collective broke because another process of the run stopped (its own error is in its output)."""


@contextmanager
def peer_failures():
    """Turn a broken collective (another process of the run failed or was killed) into one line, instead of
    a traceback on every surviving process."""
    try:
        yield
    except DynconvError:
        raise
    except Exception as e:
        text = f"{e.__class__.__name__}: {e}"
        broken = isinstance(e, getattr(dist, "DistError", ())) or any(
            s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                                "DistBackendError", "connection to rank"))
        if not (broken and os.environ.get("WORLD_SIZE", "1") != "1"):
            raise
        raise PeerFailed(f"process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE')} stopped: another "
                         "process of this run failed (its error is above)") from None
