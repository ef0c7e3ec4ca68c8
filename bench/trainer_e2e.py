"""`dynconv train` end to end ÷ a bare PyTorch + FFCV loop doing the same work, on the CPU.

Both read the same ``.beton`` with an FFCV ``Loader`` (centre-crop decoder, batch 64, random order, the same
workers), train the same ResNet18 with the same SGD settings for the same epochs, validate after every epoch
and save a checkpoint after every epoch; dynconv adds what it always does (its hooks, atomic checkpoints,
the final per-subset evaluation of the configured subsets — here RGB only). Images/s = training images ×
epochs ÷ the wall time of the whole call. Each side runs twice, interleaved; the best of each is compared.

    .venv/bin/python bench/trainer_e2e.py [--images 2000] [--size 64] [--epochs 3] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dynconv.data import scan_image_folder
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset
from dynconv.launch.config import load_config
from dynconv.launch.training import run_training
from dynconv.models import create_model
from dynconv.train import build_optimizer, build_scheduler


def bare(train: Path, val: Path, a, out: Path) -> float:
    import numpy as np
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, Squeeze, ToTensor, ToTorchImage

    def loader(path, order):
        mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
        return Loader(str(path), batch_size=a.batch, num_workers=a.workers, order=order, seed=0, drop_last=False,
                      pipelines={"image": [CenterCropRGBImageDecoder((a.size, a.size), 1.0),
                                           NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()],
                                 "label": [IntDecoder(), ToTensor(), Squeeze(1)]})
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    opt = build_optimizer(model, "sgd", 0.05, 5e-4)
    sched = build_scheduler(opt, "cosine", a.epochs)
    tr, va = loader(train, OrderOption.RANDOM), loader(val, OrderOption.SEQUENTIAL)
    for epoch in range(a.epochs):
        model.train()
        for x, y in tr:
            loss = F.cross_entropy(model(x), y.long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in va)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "val_acc": correct}, out / f"bare_{epoch}.pt")
    return time.perf_counter() - t0


def dynconv(train: Path, val: Path, a, out: Path, i: int) -> float:
    cfg = load_config(None, [f"data.train={train}", f"data.val={val}", f"data.image_size={a.size}",
                             f"data.num_workers={a.workers}", "data.augment.enabled=false", "model.name=resnet18",
                             "model.num_classes=10", "dropout.kind=none", f"train.epochs={a.epochs}",
                             f"train.batch_size={a.batch}", "train.lr=0.05", "train.keep_checkpoints=1",
                             "train.log_every_steps=0", "eval.subsets=RGB", "eval.every_epoch=false",
                             "data.drop_last=false", "tracking.enabled=false", f"run.dir={out / f'dyn{i}'}"])
    t0 = time.perf_counter()
    run_training(cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dataset(tmp / "d", num_classes=10, train_per_class=a.images // 10, val_per_class=20, size=a.size)
        train, val = (write_beton(scan_image_folder(tmp / "d" / s), tmp / f"{s}.beton", size=a.size, store="raw",
                                  num_workers=a.workers) for s in ("train", "val"))
        times = {"bare PyTorch + FFCV loop": [], "dynconv train": []}
        for i in range(2):
            times["bare PyTorch + FFCV loop"].append(bare(train, val, a, tmp))
            times["dynconv train"].append(dynconv(train, val, a, tmp, i))
    print(f"{a.images} training images of {a.size}x{a.size}, {a.epochs} epochs, batch {a.batch}, {a.workers} workers, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs; best of 2 runs each")
    print("| loop | wall (s) | images/s | ratio |")
    print("|---|---:|---:|---:|")
    base = a.images * a.epochs / min(times["bare PyTorch + FFCV loop"])
    for name, t in times.items():
        rate = a.images * a.epochs / min(t)
        print(f"| {name} | {min(t):.1f} | {rate:.0f} | {rate / base:.3f} |")
    print("Goal: dynconv train ÷ the bare loop ≥ 0.95")


if __name__ == "__main__":
    main()
