"""Steps/s of dynconv's trainer (``fit``: transforms, channel dropout, metrics, hooks, checkpoint) ÷ a bare
hand-written forward+backward+step loop, same model and in-memory batches, in one process. Goal ≥ 0.95.

    .venv/bin/python bench/trainer_overhead.py [--model dynamic_resnet18] [--batch 32] [--size 64] [--steps 30]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dynconv.channel_select import forward_subset
from dynconv.data import BatchTransform
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.loaders import DataSource
from dynconv.dropout import ChannelDropout
from dynconv.models import create_model
from dynconv.train import FitSpec, build_optimizer, build_scheduler, fit
from dynconv.train.strategies import build_strategy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dynamic_resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (a.batch, 3, a.size, a.size), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (a.batch,), generator=g)) for _ in range(a.steps)]
    transform = BatchTransform(IMAGENET_MEAN, IMAGENET_STD, dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        torch.manual_seed(0)
        model = create_model(a.model, num_classes=10).to(dev).train()
        opt = build_optimizer(model, "sgd", 0.01, 5e-4)
        sync()
        t0 = time.perf_counter()
        for x, y in batches:
            loss = F.cross_entropy(forward_subset(model, transform(x), (0, 1, 2)), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()
        return a.steps / (time.perf_counter() - t0)

    def trainer() -> float:
        torch.manual_seed(0)
        model = create_model(a.model, num_classes=10).to(dev)
        opt = build_optimizer(model, "sgd", 0.01, 5e-4)
        with tempfile.TemporaryDirectory() as tmp:
            spec = FitSpec(epochs=1, device=dev, train_transform=lambda x, e, s: transform(x),
                           eval_transform=transform, dropout=ChannelDropout("none", 3), run_dir=Path(tmp),
                           manifest={"format_version": 1})
            source = DataSource(batches, None, a.steps * a.batch, "memory")
            sync()
            t0 = time.perf_counter()
            strategy = build_strategy("single", dev)
            strategy.setup(model, opt)
            fit(strategy, source, None, build_scheduler(opt, "constant", 1), spec)
            sync()
            return a.steps / (time.perf_counter() - t0)

    bare(), trainer()  # warm-up
    rates = {"bare loop": [], "dynconv fit": []}
    for _ in range(a.rounds):  # interleaved so machine noise hits both alike
        rates["bare loop"].append(bare())
        rates["dynconv fit"].append(trainer())
    base = max(rates["bare loop"])
    print(f"{a.model}, batch {a.batch}, {a.size}x{a.size}, {a.steps} steps x {a.rounds} rounds, device {dev}, "
          f"torch {torch.__version__}")
    print(f"{'loop':14s} {'best steps/s':>13s} {'ratio':>7s}")
    for name, r in rates.items():
        print(f"{name:14s} {max(r):13.2f} {max(r) / base:7.3f}")
    print("goal: dynconv fit ≥ 0.95 × bare loop (includes the end-of-epoch checkpoint write)")


if __name__ == "__main__":
    main()
