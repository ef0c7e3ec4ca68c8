"""ResNet18 at FFCV's ImageNet recipe settings on one GPU: `dynconv train` ÷ a bare FFCV + PyTorch loop.

Both read the same synthetic ``.beton`` (``--images`` JPEGs of about ``--side`` px, quality 90: textures,
photo-like to decode; ``--unique`` distinct images, each stored several times) with FFCV decoding on this
machine's CPUs, random resized crops + horizontal flips, batch ``--batch``, progressive resizing from
``--res-start`` to ``--res-end`` px (FFCV's rule: multiples of 32, linear over the epochs), bf16 autocast,
``channels_last``, SGD with label smoothing 0.1 and a cosine schedule, and both validate (centre crop at
``--res-end``) and save a checkpoint after every epoch. The bare loop is FFCV's ImageNet example reduced to
that: the decoder's output size set per epoch, normalisation by FFCV on the device; dynconv decodes at
``--res-end`` and resizes early epochs on the device (``train.res_start``), as it always does, and adds its
hooks, atomic checkpoints and the final evaluation. Each runs with ``torch.compile`` off and on.

Reported per run: images/s over the whole call (start-up, compilation, validation and checkpoints
included), images/s of the last epoch (validation included, the checkpoint not), the share of that epoch
spent waiting for the loader (dynconv's ``data_wait_s``; the bare loop measured the same way), and for the bare loop a ``torch.profiler`` summary
of ``--profile-steps`` steps: data wait vs CUDA kernel time per step, and the top operations.
FFCV's published ResNet18 figure for comparison: 16 epochs of ImageNet (1.28 M images) in about 35 min on
one A100 with evaluation, about 9,750 images/s.

Without a CUDA device it prints one line and exits 0; ``--device cpu`` runs it anyway with whatever small
settings are given (a check that the script works, not a figure)::

    python bench/gpu_recipe.py [--images 50000] [--side 350] [--batch 1024] [--epochs 3] [--compile off,on]
    python bench/gpu_recipe.py --device cpu --images 512 --unique 100 --side 96 --batch 64 --res-start 32 \\
        --res-end 64 --epochs 2 --workers 2 --compile off --precision fp32
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynconv.data import scan_image_folder
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.ffcv_io import write_beton
from dynconv.data.folder import FolderIndex
from dynconv.data.synth import write_dataset
from dynconv.launch.config import load_config
from dynconv.launch.training import run_training
from dynconv.models import create_model
from dynconv.train import Hook, build_optimizer, build_scheduler
from dynconv.train.resize import resolution_at

LR, WEIGHT_DECAY, SMOOTHING, CLASSES = 0.1, 5e-5, 0.1, 10


def write_betons(tmp: Path, a) -> tuple[Path, Path]:
    """``a.images`` training JPEGs (``a.unique`` distinct ones, repeated) and ``a.val_images`` validation ones."""
    per_class = max(1, a.unique // CLASSES)
    write_dataset(tmp / "d", num_classes=CLASSES, train_per_class=per_class, val_per_class=per_class,
                  size=a.side, kind="textures")
    out = []
    for split, n in (("train", a.images), ("val", a.val_images)):
        index = scan_image_folder(tmp / "d" / split)
        samples = (index.samples * (n // len(index.samples) + 1))[:n]
        out.append(write_beton(FolderIndex(index.root, index.classes, samples), tmp / f"{split}.beton",
                               max_side=a.side, jpeg_quality=90, num_workers=a.workers))
    return out[0], out[1]


def bare(train: Path, val: Path, a, device: torch.device, compile: bool, out: Path) -> dict:
    """FFCV's ImageNet example, reduced to the settings above."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    t0 = time.perf_counter()
    mean, std = np.array(IMAGENET_MEAN) * 255, np.array(IMAGENET_STD) * 255
    dtype = np.float16 if device.type == "cuda" else np.float32

    def loader(path, decoder, order, train):
        image = [decoder, *([RandomHorizontalFlip()] if train else [])]
        if device.type == "cuda":  # FFCV's example: normalised on the device
            image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(), NormalizeImage(mean, std, dtype)]
        else:  # FFCV's compiled NormalizeImage cannot follow its Python operations: before them
            image += [NormalizeImage(mean, std, dtype), ToTensor(), ToTorchImage()]
        label = [IntDecoder(), ToTensor(), Squeeze(), ToDevice(device, non_blocking=True)]
        return Loader(str(path), batch_size=a.batch, num_workers=a.workers, order=order, seed=0, os_cache=True,
                      drop_last=train, pipelines={"image": image, "label": label})

    decoder = RandomResizedCropRGBImageDecoder((a.res_start, a.res_start))
    tr = loader(train, decoder, OrderOption.RANDOM, True)
    va = loader(val, CenterCropRGBImageDecoder((a.res_end, a.res_end), ratio=1.0), OrderOption.SEQUENTIAL, False)
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=CLASSES).to(device, memory_format=torch.channels_last)
    opt = build_optimizer(model, "sgd", LR, WEIGHT_DECAY)
    sched = build_scheduler(opt, "cosine", a.epochs)
    step_model = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    epochs, waits = [], []

    def train_step(x, y):
        with autocast:
            loss = F.cross_entropy(step_model(x.contiguous(memory_format=torch.channels_last)).float(), y.long(),
                                   label_smoothing=SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for epoch in range(1, a.epochs + 1):
        res = resolution_at(epoch, a.res_start, a.res_end, max(1, a.epochs - 1))
        decoder.output_size = (res, res)  # as FFCV's example: the next epoch decodes at this size
        model.train()
        e0, wait, batches = time.perf_counter(), 0.0, iter(tr)
        while True:
            w0 = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - w0
            if batch is None:
                break
            train_step(*batch)
        sched.step()
        model.eval()
        with torch.no_grad(), autocast:
            correct = sum(int((step_model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
                          for x, y in va)
        epochs.append(time.perf_counter() - e0)  # as dynconv's epoch_time_s: before the checkpoint
        waits.append(wait)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "val_correct": correct}, out / f"bare_{epoch}.pt")
    result = {"wall": time.perf_counter() - t0, "epochs": epochs, "waits": waits}
    if a.profile_steps:
        result["profile"] = profile(tr, train_step, a.profile_steps, device)
    return result


def profile(tr, train_step, steps: int, device: torch.device) -> str:
    """``torch.profiler`` over ``steps`` training steps: per step wall, data wait and device kernel time."""
    from torch.profiler import ProfilerActivity, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batches, done = iter(tr), 0
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=activities) as prof:
        while done < steps:
            with record_function("data_wait"):
                batch = next(batches, None)
            if batch is None:
                break
            with record_function("train_step"):
                train_step(*batch)
            done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    for _ in batches:  # let the loader finish its epoch
        pass
    events = prof.key_averages()
    cpu_ms = {e.key: e.cpu_time_total / 1e3 for e in events if e.key in ("data_wait", "train_step")}
    kernels = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    n = max(done, 1)
    return (f"{done} steps: {1e3 * wall / n:.1f} ms/step wall, data wait {cpu_ms.get('data_wait', 0) / n:.1f} ms/step, "
            f"train step (host) {cpu_ms.get('train_step', 0) / n:.1f} ms/step, device kernels {kernels / n:.1f} "
            f"ms/step\n" + events.table(sort_by=sort, row_limit=8))


class Record(Hook):
    def __init__(self):
        self.metrics = []

    def on_epoch_end(self, epoch, metrics, checkpoint):
        self.metrics.append(metrics)


def dynconv(train: Path, val: Path, a, device: torch.device, compile: bool, out: Path) -> dict:
    cfg = load_config(None, [
        f"data.train={train}", f"data.val={val}", f"data.image_size={a.res_end}", f"data.num_workers={a.workers}",
        "data.decoder=random_resized_crop", "data.augment.vflip=0", "data.augment.rotation=0",
        "data.augment.perspective=0", "model.name=resnet18", f"model.num_classes={CLASSES}", "dropout.kind=none",
        f"train.epochs={a.epochs}", f"train.batch_size={a.batch}", f"train.lr={LR}",
        f"train.weight_decay={WEIGHT_DECAY}", f"train.label_smoothing={SMOOTHING}", f"train.res_start={a.res_start}",
        f"train.precision={a.precision}", "train.channels_last=true", f"train.compile={str(compile).lower()}",
        f"train.device={device}", "train.keep_checkpoints=1", "train.log_every_steps=0", "eval.subsets=RGB",
        "eval.every_epoch=false", "tracking.enabled=false", f"run.dir={out / f'dyn_{compile}'}"])
    record = Record()
    t0 = time.perf_counter()
    run_training(cfg, hooks=[record])
    return {"wall": time.perf_counter() - t0, "epochs": [m["epoch_time_s"] for m in record.metrics],
            "waits": [m["data_wait_s"] for m in record.metrics]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA, else skip), cuda, cuda:N or cpu")
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--unique", type=int, default=2_000, help="distinct training images (repeated to --images)")
    ap.add_argument("--val-images", type=int, default=5_000)
    ap.add_argument("--side", type=int, default=350)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--res-start", type=int, default=160)
    ap.add_argument("--res-end", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--compile", default="off,on", help="off, on, or off,on")
    ap.add_argument("--profile-steps", type=int, default=20)
    a = ap.parse_args()
    if a.device == "auto":
        if not torch.cuda.is_available():
            print("gpu_recipe: no CUDA device here, skipped (--device cpu runs it on the CPU as a check)")
            return
        a.device = "cuda"
    device = torch.device(a.device)
    compiles = [{"off": False, "on": True}[c.strip()] for c in a.compile.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train, val = write_betons(tmp, a)
        print(f"wrote {a.images:,} + {a.val_images:,} JPEGs of {a.side} px in {time.perf_counter() - t0:.0f} s")
        results = {}
        for compile in compiles:
            tag = "compile on" if compile else "compile off"
            results[f"bare FFCV + PyTorch, {tag}"] = bare(train, val, a, device, compile, tmp)
            results[f"dynconv train, {tag}"] = dynconv(train, val, a, device, compile, tmp)
    print(f"{name}, torch {torch.__version__}, {a.workers} loader threads on {os.cpu_count()} CPUs; ResNet18, "
          f"{a.images:,} training images, batch {a.batch}, {a.res_start}->{a.res_end} px over {a.epochs} epochs, "
          f"{a.precision}, channels_last, {a.val_images:,} validation images after every epoch")
    print("| run | wall (s) | images/s, whole call | images/s, last epoch | ratio (last epoch) | data wait (last epoch) |")
    print("|---|---:|---:|---:|---:|---:|")
    per_epoch = a.images // a.batch * a.batch  # both drop the last partial batch
    for compile in compiles:
        tag = "compile on" if compile else "compile off"
        base = None
        for side in ("bare FFCV + PyTorch", "dynconv train"):
            r = results[f"{side}, {tag}"]
            last = per_epoch / r["epochs"][-1]
            base = base or last
            wait = r["waits"][-1] / r["epochs"][-1]
            print(f"| {side}, {tag} | {r['wall']:.1f} | {per_epoch * a.epochs / r['wall']:,.0f} | {last:,.0f} | "
                  f"{last / base:.3f} | {100 * wait:.0f} % |")
    print("Goal: dynconv ÷ bare ≥ 0.95. FFCV's published ResNet18 rate on one A100: ~9,750 images/s "
          "(16 epochs of ImageNet in ~35 min, evaluation included)")
    for compile in compiles:
        r = results[f"bare FFCV + PyTorch, {'compile on' if compile else 'compile off'}"]
        if "profile" in r:
            print(f"\nwhere the bare loop's time goes (compile {'on' if compile else 'off'}): {r['profile']}")
    print("median epoch (s): " + ", ".join(f"{k} {statistics.median(r['epochs']):.2f}" for k, r in results.items()))


if __name__ == "__main__":
    main()
