"""Images/s of dynconv's FFCV input pipeline vs a torchvision ImageFolder DataLoader, same augmentations.

Both decode the same JPEGs at the same size with the same workers and batch size and apply the study's
augmentations (horizontal + vertical flip, rotation ±15°, perspective 0.2 with p=0.5) and normalisation:
dynconv as FFCV decoding + one batched transform, torchvision per sample in its workers. The first
epoch (FFCV compiles its pipeline with numba then) is reported separately and excluded from the rate.

    .venv/bin/python bench/loader.py [--images 3000] [--size 96] [--workers 2] [--epochs 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from dynconv.data import AugmentParams, BatchTransform, build_source, scan_image_folder
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset


def timed_epochs(run_epoch, epochs: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    run_epoch(0)
    first = time.perf_counter() - t0
    times = []
    for e in range(1, epochs + 1):
        t0 = time.perf_counter()
        run_epoch(e)
        times.append(time.perf_counter() - t0)
    return first, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    aug = AugmentParams(hflip=0.5, vflip=0.5, rotation=15, perspective=0.2, perspective_p=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, num_classes=10, train_per_class=a.images // 10, val_per_class=1, size=a.size)
        beton = write_beton(scan_image_folder(root / "train"), Path(tmp) / "train.beton", max_side=a.size,
                            num_workers=a.workers)
        n = a.images

        source = build_source(beton, image_size=a.size, batch_size=a.batch, num_workers=a.workers, train=True)
        transform = BatchTransform(IMAGENET_MEAN, IMAGENET_STD, torch.device("cpu"), aug)

        def ffcv_epoch(e: int) -> None:
            for step, (x, _) in enumerate(source.epoch(e)):
                transform(x, e, step)

        tv = transforms.Compose([
            transforms.Resize((a.size, a.size)), transforms.RandomHorizontalFlip(aug.hflip),
            transforms.RandomVerticalFlip(aug.vflip), transforms.RandomRotation(aug.rotation),
            transforms.RandomPerspective(aug.perspective, aug.perspective_p), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        tv_loader = DataLoader(datasets.ImageFolder(root / "train", tv), batch_size=a.batch, shuffle=True,
                               num_workers=a.workers, drop_last=True, persistent_workers=True)

        def tv_epoch(e: int) -> None:
            for _ in tv_loader:
                pass

        results = {"torchvision ImageFolder": timed_epochs(tv_epoch, a.epochs),
                   "dynconv FFCV + batched aug": timed_epochs(ffcv_epoch, a.epochs)}
    print(f"{n} images of {a.size}x{a.size}, batch {a.batch}, {a.workers} workers, {a.epochs} timed epochs "
          f"after one warm-up, torch threads {torch.get_num_threads()}")
    print(f"{'pipeline':28s} {'first epoch (s)':>16s} {'images/s':>10s} {'ratio':>7s}")
    base = None
    for name, (first, times) in results.items():
        rate = n * len(times) / sum(times)
        base = base or rate
        print(f"{name:28s} {first:16.2f} {rate:10.0f} {rate / base:7.2f}")
    print("goal: dynconv FFCV ≥ 2.5× torchvision")


if __name__ == "__main__":
    main()
