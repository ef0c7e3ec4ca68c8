"""What a sandwich step costs (``dropout.kind=sandwich``: N passes of one batch, one update) ÷ N plain steps
(one pass, one update each) over the same subsets, in dynconv's training loop, same model and in-memory
batches, rounds alternating. Goal ≤ 1.05 (the sandwich saves N − 1 optimizer steps and batch transforms).

    .venv/bin/python bench/sandwich_cost.py [--model dynamic_resnet18] [--width 64] [--batch 32] [--size 64]
        [--steps 12] [--n-subsets 4] [--rounds 3] [--inplace-distill] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dynconv.data import BatchTransform
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.loaders import DataSource
from dynconv.dropout import ChannelDropout
from dynconv.models import create_model
from dynconv.train import FitSpec, build_optimizer
from dynconv.train.loop import train_one_epoch
from dynconv.train.strategies import build_strategy


class SandwichUnrolled(ChannelDropout):
    """One pass per step: plain step ``k`` is pass ``k % N`` of the sandwich's step ``k // N`` (same subsets)."""

    def __init__(self, sandwich: ChannelDropout):
        super().__init__("none", len(sandwich.full))
        self.sandwich = sandwich

    def passes(self, epoch: int, step: int):
        subset, _ = self.sandwich.passes(epoch, step // self.sandwich.n_passes)[step % self.sandwich.n_passes]
        return [(subset, 1.0)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dynamic_resnet18")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12, help="sandwich steps per round (plain: N times as many)")
    ap.add_argument("--n-subsets", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inplace-distill", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    n = a.n_subsets
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (a.batch, 3, a.size, a.size), dtype=torch.uint8, generator=g),
                torch.randint(0, 10, (a.batch,), generator=g)) for _ in range(a.steps * n)]
    transform = BatchTransform(IMAGENET_MEAN, IMAGENET_STD, dev)
    sandwich = ChannelDropout("sandwich", 3, seed=0, n_subsets=n)

    def run(dropout: ChannelDropout, data: list, tmp: Path) -> float:
        torch.manual_seed(0)
        model = create_model(a.model, num_classes=10, width=a.width).to(dev)
        strategy = build_strategy("single", dev, passes=dropout.n_passes)
        strategy.setup(model, build_optimizer(model, "sgd", 0.01, 5e-4))
        spec = FitSpec(epochs=1, device=dev, train_transform=lambda x, e, s: transform(x),
                       eval_transform=transform, dropout=dropout, run_dir=tmp, manifest={},
                       inplace_distill=a.inplace_distill and dropout is sandwich)
        train_one_epoch(strategy, DataSource(data[:2], None, 2 * a.batch, "memory"), spec, 1)  # warm-up
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_one_epoch(strategy, DataSource(data, None, len(data) * a.batch, "memory"), spec, 1)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    print(f"{a.model} width {a.width}, batch {a.batch} at {a.size} px on {dev}: {a.steps} sandwich steps of {n} "
          f"passes vs {a.steps * n} plain steps over the same subsets"
          + (", in-place distillation" if a.inplace_distill else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1, a.rounds + 1):
            plain = run(SandwichUnrolled(sandwich), batches, Path(tmp))
            both = run(sandwich, batches[:a.steps], Path(tmp))
            rows.append((plain, both))
            print(f"  round {r}/{a.rounds}: {a.steps * n} plain steps {plain:.2f} s, {a.steps} sandwich steps "
                  f"{both:.2f} s", flush=True)
    print(f"\n| round | {n} plain steps (s) | 1 sandwich step (s) | sandwich ÷ {n} plain |\n|---:|---:|---:|---:|")
    for r, (plain, both) in enumerate(rows, 1):
        print(f"| {r} | {plain / a.steps:.3f} | {both / a.steps:.3f} | {both / plain:.3f} |")
    ratios = sorted(both / plain for plain, both in rows)
    print(f"\nmedian ratio {ratios[len(ratios) // 2]:.3f} (goal ≤ 1.05)")


if __name__ == "__main__":
    main()
