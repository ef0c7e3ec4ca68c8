"""What FFCV's thread reset cost CPU training: ResNet18 training steps/s right after an FFCV epoch, with
torch's intra-op threads as configured (dynconv now) and as FFCV left them (``data.num_workers``, what it
used to set every epoch), for each worker count below the core count.

    .venv/bin/python bench/threads.py [--steps 20] [--size 64] [--batch 64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dynconv.data import build_source, scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset
from dynconv.models import create_model


def steps_per_s(model, opt, x, y, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    configured = torch.get_num_threads()
    model = create_model("resnet18", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(a.batch, 3, a.size, a.size), torch.randint(0, 10, (a.batch,))
    steps_per_s(model, opt, x, y, 3)  # warm-up
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "d", num_classes=2, train_per_class=64, val_per_class=1, size=a.size)
        beton = write_beton(scan_image_folder(root / "train"), Path(tmp) / "t.beton", size=a.size, num_workers=1)
        for workers in range(1, max(2, cores)):
            source = build_source(beton, image_size=a.size, batch_size=32, num_workers=workers, train=True)
            for _ in source.epoch(0):
                pass
            kept = torch.get_num_threads()
            fixed = steps_per_s(model, opt, x, y, a.steps)
            torch.set_num_threads(workers)  # what FFCV's Compiler.set_num_threads used to leave behind
            capped = steps_per_s(model, opt, x, y, a.steps)
            torch.set_num_threads(configured)
            rows.append((workers, kept, fixed, capped))
    print(f"{cores} cores available (sched_getaffinity; taskset -c to vary), torch threads configured {configured}, "
          f"ResNet18 training on {a.batch} images of {a.size}x{a.size}")
    print("| data.num_workers | threads after an FFCV epoch | steps/s (threads kept) | steps/s (reset to workers) | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for workers, kept, fixed, capped in rows:
        print(f"| {workers} | {kept} | {fixed:.2f} | {capped:.2f} | {fixed / capped:.2f} |")


if __name__ == "__main__":
    main()
