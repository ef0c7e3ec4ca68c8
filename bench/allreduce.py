"""Data-parallel cost per step, measured: each model's forward + backward time (one process, one thread) beside
the gloo all-reduce of its gradients between 2 processes — the two inputs of docs/scaling.md.

    .venv/bin/python bench/allreduce.py [--size 64] [--batch 32] [--reps 5]
    # across two hosts of the local cluster (slurm/cluster/local-cluster.sh up --nodes 2):
    srun --partition multi --nodes 2 --ntasks 2 .venv/bin/python bench/allreduce.py --master dcnode1

Without ``--master`` the script starts its two ranks itself on 127.0.0.1. The all-reduce is timed as DDP
issues it: the gradients in 25 MB buckets (DDP's default ``bucket_cap_mb``), one all-reduce per bucket.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dynconv.models import create_model
from dynconv.train.distributed import free_port

MODELS = ("dynamic_resnet18", "ran2", "resnet34")
BUCKET_MB = 25


def step_ms(name: str, size: int, batch: int, reps: int) -> tuple[float, int]:
    """Median forward + backward + SGD step time (ms) at ``batch`` images of ``size`` px; parameter count."""
    model = create_model(name, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(reps + 1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def allreduce_ms(numel: int, reps: int) -> float:
    """Median time (ms) of all-reducing ``numel`` fp32 values in DDP-sized buckets (in the process group)."""
    per = BUCKET_MB * 2 ** 20 // 4
    buckets = [torch.ones(min(per, numel - i)) for i in range(0, numel, per)]
    times = []
    for i in range(reps + 1):
        dist.barrier()
        t0 = time.perf_counter()
        for b in buckets:
            dist.all_reduce(b)
        if i:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def rank_main(rank: int, world: int, master: str, port: int, args, queue=None) -> None:
    os.environ.update(MASTER_ADDR=master, MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for name in MODELS:
        compute, params = step_ms(name, args.size, args.batch, args.reps) if rank == 0 else (0.0, 0)
        numel = [params]
        dist.broadcast_object_list(numel, src=0)
        comm = allreduce_ms(numel[0], args.reps)
        rows.append((name, numel[0], compute, comm))
    if rank == 0:
        where = f"{world} ranks on {socket.gethostname()} (127.0.0.1)" if queue is not None else \
            f"rank 0 on {socket.gethostname()}, rendezvous {master}"
        print_table(rows, args, where)
    dist.destroy_process_group()


def print_table(rows, args, where: str) -> None:
    print(f"forward + backward + step: batch {args.batch} at {args.size} px, 1 thread; gloo all-reduce in "
          f"{BUCKET_MB} MB buckets, {where}; median of {args.reps}; torch {torch.__version__}")
    print("| model | parameters | gradients (MB) | step (ms) | all-reduce (ms) | algorithm bandwidth (GB/s) "
          "| all-reduce ÷ step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, params, compute, comm in rows:
        mb = params * 4 / 1e6
        print(f"| `{name}` | {params / 1e6:.1f} M | {mb:.1f} | {compute:.0f} | {comm:.1f} | "
              f"{mb / 1e3 / (comm / 1e3):.2f} | {comm / compute:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--master", help="rendezvous host when started by srun (rank and size from SLURM_PROCID/NTASKS)")
    ap.add_argument("--port", type=int, default=29431)
    args = ap.parse_args()
    if args.master:
        rank_main(int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"]), args.master, args.port, args)
    else:
        mp.spawn(rank_main, args=(2, "127.0.0.1", free_port(), args, True), nprocs=2, join=True)


if __name__ == "__main__":
    main()
