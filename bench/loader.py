"""Images/s of dynconv's FFCV input pipeline vs a torchvision ImageFolder DataLoader (same augmentations) and
vs a bare ``ffcv.loader.Loader`` with FFCV's standard ImageNet training operations.

Part 1 (the study's augmentations):

All pipelines decode the same JPEGs at the same size with the same workers and batch size and apply the
study's augmentations (horizontal + vertical flip, rotation ±15°, perspective 0.2 with p=0.5) and
normalisation; they end with a normalised float batch on the CPU. torchvision: per sample in its worker
processes (PIL). dynconv FFCV, for both ``data.augment.where`` choices, as ``dynconv train`` runs them on
the CPU: ``loader`` normalises and warps inside the FFCV pipeline (FFCV's ``NormalizeImage``, then OpenCV in
threads); ``device`` normalises and warps the uint8 batch afterwards with one batched ``grid_sample`` (here
the "device" is the CPU). A third FFCV row without any augmentation shows what decoding alone costs.

Every pipeline first runs one warm-up epoch (FFCV compiles its pipeline with numba then), reported
separately and excluded from the rate; the timed epochs then run round-robin (one epoch of each pipeline
per round), so that a change in the machine's load hits every pipeline alike. Besides images/s (wall
clock) the table gives the CPU time the pipeline spent per 1,000 images (this process and its worker
processes, user + system), which other programs on a shared machine disturb much less.

Part 2 (FFCV's own recipe): a bare FFCV ``Loader`` — decoder (centre crop, or random resized crop),
``RandomHorizontalFlip``, ``NormalizeImage``, ``ToTensor``, ``ToTorchImage`` — against dynconv's pipeline with
the same decoder (``data.decoder``) and a horizontal flip in the loader, normalised in the pipeline as
``dynconv train`` does on the CPU, and unfused (uint8 batches normalised afterwards, as for a GPU), on the
same ``.beton``, batch, workers and order (random, same seed). Goal: dynconv ÷ bare FFCV ≥ 0.95.

    .venv/bin/python bench/loader.py [--images 3000] [--size 96] [--workers 2] [--epochs 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from dynconv.data import AugmentParams, BatchTransform, build_source, scan_image_folder
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset

BASELINE = "torchvision ImageFolder"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its children (loader workers) so far."""
    me = psutil.Process()
    times = [me.cpu_times()] + [c.cpu_times() for c in me.children(recursive=True)]
    return sum(t.user + t.system for t in times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--recipe-only", action="store_true", help="only part 2 (dynconv vs bare FFCV)")
    a = ap.parse_args()
    aug = AugmentParams(hflip=0.5, vflip=0.5, rotation=15, perspective=0.2, perspective_p=0.5)
    cpu = torch.device("cpu")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, num_classes=10, train_per_class=a.images // 10, val_per_class=1, size=a.size)
        beton = write_beton(scan_image_folder(root / "train"), Path(tmp) / "train.beton", max_side=a.size,
                            num_workers=a.workers)

        def ffcv_pipeline(where: str | None, params: AugmentParams = aug, decoder: str = "center_crop",
                          fused: bool = True):
            # as `dynconv train` on the CPU: normalised in FFCV's pipeline unless augmenting on the device
            normalize = (IMAGENET_MEAN, IMAGENET_STD) if fused and where != "device" else None
            source = build_source(beton, image_size=a.size, batch_size=a.batch, num_workers=a.workers, train=True,
                                  augment=params if where == "loader" else None, decoder=decoder, normalize=normalize)
            transform = BatchTransform(IMAGENET_MEAN, IMAGENET_STD, cpu, params if where == "device" else None)

            def run_epoch(e: int) -> int:
                n = 0
                for step, (x, _) in enumerate(source.epoch(e, copy=False)):  # as the trainer (one micro-batch a step)
                    n += transform(x, e, step).shape[0]
                return n
            return run_epoch

        tv = transforms.Compose([
            transforms.Resize((a.size, a.size)), transforms.RandomHorizontalFlip(aug.hflip),
            transforms.RandomVerticalFlip(aug.vflip), transforms.RandomRotation(aug.rotation),
            transforms.RandomPerspective(aug.perspective, aug.perspective_p), transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        tv_loader = DataLoader(datasets.ImageFolder(root / "train", tv), batch_size=a.batch, shuffle=True,
                               num_workers=a.workers, drop_last=True, persistent_workers=True)

        def tv_epoch(_e: int) -> int:
            return sum(x.shape[0] for x, _ in tv_loader)

        flip = AugmentParams(hflip=0.5, vflip=0, rotation=0, perspective=0, perspective_p=0)
        pipelines = {} if a.recipe_only else {
            BASELINE: tv_epoch, "dynconv FFCV, where=loader": ffcv_pipeline("loader"),
            "dynconv FFCV, where=device": ffcv_pipeline("device"), "dynconv FFCV, no augmentation": ffcv_pipeline(None)}
        recipe = {}
        for decoder in ("center_crop", "random_resized_crop"):
            recipe[f"bare FFCV, {decoder}"] = bare_ffcv(beton, a, decoder)
            recipe[f"dynconv, {decoder}"] = ffcv_pipeline("loader", flip, decoder)
            recipe[f"dynconv unfused, {decoder}"] = ffcv_pipeline("loader", flip, decoder, fused=False)
        pipelines.update(recipe)
        first, rates, cpu = {}, {name: [] for name in pipelines}, {name: [0.0, 0] for name in pipelines}
        for name, run_epoch in pipelines.items():  # warm-up epoch 0 (FFCV: numba compilation)
            t0 = time.perf_counter()
            run_epoch(0)
            first[name] = time.perf_counter() - t0
        for e in range(1, a.epochs + 1):
            for name, run_epoch in pipelines.items():
                t0, c0 = time.perf_counter(), cpu_seconds()
                n = run_epoch(e)
                rates[name].append(n / (time.perf_counter() - t0))
                cpu[name][0] += cpu_seconds() - c0
                cpu[name][1] += n
    print(f"{a.images} images of {a.size}x{a.size}, batch {a.batch}, {a.workers} workers, {a.epochs} timed epochs "
          f"per pipeline (round-robin) after one warm-up epoch, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    per_k = {name: 1000 * c / n for name, (c, n) in cpu.items()}
    if not a.recipe_only:
        print(f"| {'pipeline':30s} | {'first epoch (s)':>15s} | {'images/s (median)':>17s} | {'min-max':>11s} | "
              f"{'ratio':>5s} | {'CPU s/1000 img':>14s} | {'CPU ratio':>9s} |")
        print(f"|{'-' * 32}|{'-' * 16}:|{'-' * 18}:|{'-' * 12}:|{'-' * 6}:|{'-' * 15}:|{'-' * 10}:|")
        base = statistics.median(rates[BASELINE])
        for name, r in rates.items():
            med = statistics.median(r)
            print(f"| {name:30s} | {first[name]:15.2f} | {med:17.0f} | {min(r):5.0f}-{max(r):<5.0f} | "
                  f"{med / base:5.2f} | {per_k[name]:14.3f} | {per_k[BASELINE] / per_k[name]:9.2f} |")
        print("ratio: images/s ÷ torchvision's; CPU ratio: torchvision's CPU time per image ÷ the pipeline's. "
              "Goal: dynconv FFCV with the study's augmentations ≥ 3.5× torchvision (2 workers)")
    print()
    print("FFCV's ImageNet training operations (decoder, horizontal flip, normalisation), dynconv ÷ bare FFCV:")
    print(f"| {'decoder':20s} | {'bare FFCV images/s':>18s} | {'dynconv images/s':>16s} | {'ratio':>5s} | "
          f"{'CPU ratio':>9s} | {'unfused ratio':>13s} |")
    print(f"|{'-' * 22}|{'-' * 19}:|{'-' * 17}:|{'-' * 6}:|{'-' * 10}:|{'-' * 14}:|")
    for decoder in ("center_crop", "random_resized_crop"):
        bare, ours, unfused = f"bare FFCV, {decoder}", f"dynconv, {decoder}", f"dynconv unfused, {decoder}"
        b, o, u = (statistics.median(rates[k]) for k in (bare, ours, unfused))
        print(f"| {decoder:20s} | {b:18.0f} | {o:16.0f} | {o / b:5.2f} | {per_k[bare] / per_k[ours]:9.2f} | "
              f"{u / b:13.2f} |")
    print("Goal: ≥ 0.95. dynconv normalises in FFCV's pipeline when training on the CPU, as here; 'unfused': "
          "uint8 batches normalised afterwards, as on a GPU (there by the device)")


def bare_ffcv(beton: Path, a, decoder: str):
    """FFCV's own training pipeline of its ImageNet example, on the CPU, ending in a normalised float batch."""
    import numpy as np
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    decode = (RandomResizedCropRGBImageDecoder((a.size, a.size)) if decoder == "random_resized_crop"
              else CenterCropRGBImageDecoder((a.size, a.size), ratio=1.0))
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    loader = Loader(str(beton), batch_size=a.batch, num_workers=a.workers, order=OrderOption.RANDOM, seed=0,
                    drop_last=True, pipelines={
                        "image": [decode, RandomHorizontalFlip(), NormalizeImage(mean, std, np.float32), ToTensor(),
                                  ToTorchImage()],
                        "label": [IntDecoder(), ToTensor(), Squeeze(1)]})

    def run_epoch(_e: int) -> int:
        return sum(x.shape[0] for x, _ in loader)
    return run_epoch


if __name__ == "__main__":
    main()
