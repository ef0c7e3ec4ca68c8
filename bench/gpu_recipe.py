"""ResNet18 at FFCV's ImageNet recipe settings on one GPU: `dynconv train` ÷ a bare FFCV + PyTorch loop.

Both read the same synthetic ``.beton`` (``--images`` JPEGs of about ``--side`` px, quality 90: textures,
photo-like to decode; ``--unique`` distinct images, each sample repeated) with FFCV decoding on this
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

Where it is, as it goes (stdout, line by line, seconds since the start first): a line when each stage starts
(making the data, each run, the profiler), each run's epochs as they end (the bare loop's line with images/s
and data-wait share; dynconv's own epoch line and the same figures), then the table. A watchdog
(``dynconv/watchdog.py``) watches the runs' steps, validation batches and epochs: after ``--stall-seconds``
(300) without one it writes to stderr which stage stalled and for how long, then every thread's stack, and
again every ``--stall-seconds`` while it lasts; ``--stall-exit`` ends the script with status 3 instead.

The data take seconds: only the distinct images (``--unique`` training, ``min(--unique, --val-images)``
validation) are rendered (in ``--workers`` processes) and JPEG-encoded into small ``.beton`` files, kept in
``--data-cache`` (default ``$XDG_CACHE_HOME/dynconv/gpu_recipe`` or ``~/.cache/dynconv/gpu_recipe``, keyed by
those settings; ``none``: a temporary folder); each run's ``.beton`` repeats their samples to ``--images`` /
``--val-images`` (FFCV's metadata and allocation table repeated, every repeat pointing at the one stored copy
of its JPEG), so every sample is still a JPEG decoded by FFCV, but no image is encoded twice.

``--quick``: settings that finish within about 5 minutes on one H100 with 16 CPU cores, both sides
included: 20,000 training images (500 distinct), 2,000 validation images, 350 px JPEGs, batch 512,
160 -> 192 px over 2 epochs, ``torch.compile`` off only, 20 profiled steps (flags given as well override them).

Rehearsal aid: ``--fake-stall-after STEPS --fake-stall-seconds S`` makes every run sleep ``S`` s in its
training step ``STEPS`` (the bare loop's step; dynconv's hook before the step), to watch the watchdog report
it (``_fake_stall`` in the dumped stack), on a CPU too.

Without a CUDA device it prints one line and exits 0; ``--device cpu`` runs it anyway with whatever small
settings are given (a check that the script works, not a figure)::

    python bench/gpu_recipe.py [--images 50000] [--side 350] [--batch 1024] [--epochs 3] [--compile off,on]
    python bench/gpu_recipe.py --quick
    python bench/gpu_recipe.py --device cpu --images 512 --unique 100 --side 96 --batch 64 --res-start 32 \\
        --res-end 64 --epochs 2 --workers 2 --compile off --precision fp32
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dynconv.data import scan_image_folder
from dynconv.data import textures
from dynconv.data.augment import IMAGENET_MEAN, IMAGENET_STD
from dynconv.data.ffcv_io import read_beton_meta, sidecar_path, write_beton
from dynconv.launch.config import load_config
from dynconv.launch.console import log_to_stdout
from dynconv.launch.training import run_training
from dynconv.models import create_model
from dynconv.train import Hook, build_optimizer, build_scheduler
from dynconv.train.resize import resolution_at
from dynconv.watchdog import Watchdog

LR, WEIGHT_DECAY, SMOOTHING, CLASSES = 0.1, 5e-5, 0.1, 10
JPEG_QUALITY, CACHE_VERSION, STALL_EXIT = 90, 1, 3
QUICK = dict(images=20_000, unique=500, val_images=2_000, side=350, batch=512, res_start=160, res_end=192,
             epochs=2, compile="off", profile_steps=20)


def _fake_stall(seconds: float) -> None:
    """The rehearsal's stall (``--fake-stall-seconds``): the frame the watchdog's stack dump shows."""
    time.sleep(seconds)


class Progress:
    """Where the script is: a line per stage and per epoch (seconds since the start first), the watchdog's
    ticks, and the rehearsal's fake stall in a run's step ``stall_after``."""

    def __init__(self, watchdog: Watchdog, stall_after: int = 0, stall_seconds: float = 0.0):
        self.watchdog, self.stall_after, self.stall_seconds = watchdog, stall_after, stall_seconds
        self.t0, self.steps = time.perf_counter(), 0

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {text}", flush=True)

    def stage(self, name: str, new_run: bool = True) -> None:
        if new_run:
            self.steps = 0  # the fake stall's count is per run
        self.watchdog.tick(name)
        self.say(f"-- {name}")

    def tick(self) -> None:
        self.watchdog.tick()

    def step(self) -> None:
        """A training step of the current run (the fake stall happens in step ``stall_after``)."""
        self.steps += 1
        if self.stall_after and self.steps == self.stall_after and self.stall_seconds > 0:
            _fake_stall(self.stall_seconds)
        self.watchdog.tick()

    def epoch_line(self, run: str, epoch: int, epochs: int, images: int, epoch_s: float, wait_s: float,
                   extra: str = "") -> None:
        self.say(f"{run}: epoch {epoch}/{epochs}  {extra}images/s={images / epoch_s:,.0f}  epoch_s={epoch_s:.2f}  "
                 f"data_wait={100 * wait_s / epoch_s:.0f} %")


def _render(job) -> None:
    """One distinct image, as ``dynconv.data.synth.write_dataset(kind="textures")`` makes it (same seed)."""
    from PIL import Image

    path, k, side, seed = job
    Image.fromarray(textures.render(k, side, np.random.default_rng(seed), CLASSES)).save(path, quality=95)


def render_images(root: Path, train_per_class: int, val_per_class: int, side: int, workers: int,
                  progress: Progress) -> None:
    """``root/{train,val}/<class>/<i>.jpg``, in ``workers`` processes (a 350 px texture takes ~50-150 ms)."""
    names, jobs = textures.class_names(CLASSES), []
    for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
        for k, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            jobs += [(root / split / name / f"{i:05d}.jpg", k, side, [0, split_id, k, i]) for i in range(n)]
    with multiprocessing.get_context("fork").Pool(max(1, min(workers, len(jobs)))) as pool:
        for _ in pool.imap_unordered(_render, jobs, chunksize=2):
            progress.tick()


def repeat_beton(src: Path, dst: Path, n: int) -> Path:
    """``dst``: a ``.beton`` of ``n`` samples, sample ``i`` being ``src``'s sample ``i % len(src)``. Only FFCV's
    per-sample metadata and allocation table are repeated, every repeat pointing at the one stored copy of its
    bytes (the data region moves by whole pages, as FFCV aligns it); the sidecar is ``src``'s with the count."""
    from ffcv.reader import Reader
    from ffcv.types import HeaderType
    from ffcv.utils import align_to_page

    r = Reader(str(src))
    u, page, item = int(r.num_samples), int(r.page_size), r.metadata.dtype.itemsize
    meta_start = HeaderType.itemsize + r.field_descriptors.nbytes
    old_data = align_to_page(meta_start + u * item, page)
    new_data = align_to_page(meta_start + n * item, page)
    shift, reps = new_data - old_data, -(-n // u)
    meta = np.tile(r.metadata, reps)[:n].copy()
    pointers = [f for f in meta.dtype.names if "data_ptr" in (meta.dtype[f].names or ())]
    assert pointers, f"{src}: no field with stored data"
    for f in pointers:
        meta[f]["data_ptr"] += shift
    table = np.concatenate([r.alloc_table] * reps)
    table["sample_id"] += np.repeat(np.arange(reps, dtype=np.uint64) * np.uint64(u), len(r.alloc_table))
    table["ptr"] += np.uint64(shift)
    table = table[table["sample_id"] < n]
    with open(src, "rb") as f:
        f.seek(old_data)
        data = f.read(int(r.header["alloc_table_ptr"]) - old_data)
    header = r.header.copy()
    header["num_samples"], header["alloc_table_ptr"] = n, new_data + len(data)
    with open(dst, "wb") as f:
        f.write(header.tobytes())
        f.write(r.field_descriptors.tobytes())
        f.write(meta.tobytes())
        f.write(bytes(new_data - f.tell()))
        f.write(data)
        f.write(table.tobytes())
    meta_json = read_beton_meta(src)
    sidecar_path(dst).write_text(json.dumps({**meta_json, "num_samples": n}, indent=1))
    return dst


def cache_root(setting: str) -> Path | None:
    if setting == "none":
        return None
    if setting:
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dynconv" / "gpu_recipe"


def distinct_betons(root: Path, a, progress: Progress) -> tuple[Path, Path, bool]:
    """The distinct training and validation images as two small ``.beton`` files under ``root``, made once per
    (classes, counts, side, quality, texture renderer); (train, val, whether they were there already)."""
    train_pc, val_pc = max(1, a.unique // CLASSES), max(1, min(a.unique, a.val_images) // CLASSES)
    renderer = hashlib.sha1(Path(textures.__file__).read_bytes()).hexdigest()[:8]
    key = (f"textures{renderer}-{CLASSES}c-{train_pc * CLASSES}+{val_pc * CLASSES}-{a.side}px-"
           f"q{JPEG_QUALITY}-v{CACHE_VERSION}")
    entry = root / key
    if (entry / "train.beton").exists() and (entry / "val.beton").exists():
        return entry / "train.beton", entry / "val.beton", True
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        render_images(tmp / "d", train_pc, val_pc, a.side, a.workers, progress)
        for split in ("train", "val"):
            write_beton(scan_image_folder(tmp / "d" / split), tmp / f"{split}.beton", max_side=a.side,
                        jpeg_quality=JPEG_QUALITY, num_workers=min(a.workers, 4))
            progress.tick()
        shutil.rmtree(tmp / "d")
        try:
            os.replace(tmp, entry)
        except OSError:  # another run made it meanwhile: use that one
            if not (entry / "val.beton").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry / "train.beton", entry / "val.beton", False


def write_betons(tmp: Path, a, progress: Progress) -> tuple[Path, Path]:
    """``a.images`` training samples (``a.unique`` distinct JPEGs, repeated) and ``a.val_images`` validation
    ones, as ``tmp/{train,val}.beton``."""
    root = cache_root(a.data_cache) or tmp / "distinct"
    train, val, cached = distinct_betons(root, a, progress)
    progress.say(f"{'found' if cached else 'made'} the distinct images in {root}: "
                 f"{read_beton_meta(train)['num_samples']:,} training + {read_beton_meta(val)['num_samples']:,} "
                 f"validation JPEGs of {a.side} px")
    return repeat_beton(train, tmp / "train.beton", a.images), repeat_beton(val, tmp / "val.beton", a.val_images)


def bare(train: Path, val: Path, a, device: torch.device, compile: bool, out: Path, progress: Progress,
         run: str) -> dict:
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
        progress.step()
        return loss.detach()

    for epoch in range(1, a.epochs + 1):
        res = resolution_at(epoch, a.res_start, a.res_end, max(1, a.epochs - 1))
        decoder.output_size = (res, res)  # as FFCV's example: the next epoch decodes at this size
        model.train()
        e0, wait, batches = time.perf_counter(), 0.0, iter(tr)
        loss_sum, steps = torch.zeros((), device=device), 0  # as FFCV's example logs it: no sync per step
        while True:
            w0 = time.perf_counter()
            batch = next(batches, None)
            wait += time.perf_counter() - w0
            if batch is None:
                break
            loss_sum += train_step(*batch)
            steps += 1
        sched.step()
        model.eval()
        correct = seen = 0
        with torch.no_grad(), autocast:
            for x, y in va:
                correct += int((step_model(x.contiguous(memory_format=torch.channels_last)).argmax(1) == y).sum())
                seen += len(y)
                progress.tick()
        epochs.append(time.perf_counter() - e0)  # as dynconv's epoch_time_s: before the checkpoint
        waits.append(wait)
        progress.epoch_line(run, epoch, a.epochs, steps * a.batch, epochs[-1], wait,
                            f"res={res}  train_loss={loss_sum.item() / max(steps, 1):.3f}  "
                            f"val_acc={correct / max(seen, 1):.1%}  ")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                    "val_correct": correct}, out / f"bare_{epoch}.pt")
    result = {"wall": time.perf_counter() - t0, "epochs": epochs, "waits": waits}
    if a.profile_steps:
        progress.stage(f"profiling {a.profile_steps} steps of the {run} loop", new_run=False)
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
    """The epochs' metrics, a line per epoch, and the watchdog's ticks: a step (``should_stop`` is asked before
    every optimiser step), validation's start, an epoch's end."""

    def __init__(self, progress: Progress, run: str, epochs: int, per_epoch: int):
        self.progress, self.run, self.epochs, self.per_epoch = progress, run, epochs, per_epoch
        self.metrics = []

    def on_fit_start(self, info):
        self.progress.tick()

    def should_stop(self):
        self.progress.step()
        return False

    def before_validation(self, module, epoch):
        self.progress.tick()

    def on_epoch_end(self, epoch, metrics, checkpoint):
        self.metrics.append(metrics)
        self.progress.tick()
        self.progress.epoch_line(self.run, epoch, self.epochs, self.per_epoch, metrics["epoch_time_s"],
                                 metrics["data_wait_s"])


def dynconv(train: Path, val: Path, a, device: torch.device, compile: bool, out: Path, progress: Progress,
            run: str) -> dict:
    cfg = load_config(None, [
        f"data.train={train}", f"data.val={val}", f"data.image_size={a.res_end}", f"data.num_workers={a.workers}",
        "data.decoder=random_resized_crop", "data.augment.vflip=0", "data.augment.rotation=0",
        "data.augment.perspective=0", "model.name=resnet18", f"model.num_classes={CLASSES}", "dropout.kind=none",
        f"train.epochs={a.epochs}", f"train.batch_size={a.batch}", f"train.lr={LR}",
        f"train.weight_decay={WEIGHT_DECAY}", f"train.label_smoothing={SMOOTHING}", f"train.res_start={a.res_start}",
        f"train.precision={a.precision}", "train.channels_last=true", f"train.compile={str(compile).lower()}",
        f"train.device={device}", "train.keep_checkpoints=1", "train.log_every_steps=0", "eval.subsets=RGB",
        "eval.every_epoch=false", "tracking.enabled=false", f"run.dir={out / f'dyn_{compile}'}"])
    record = Record(progress, run, a.epochs, a.images // a.batch * a.batch)
    t0 = time.perf_counter()
    run_training(cfg, hooks=[record])
    return {"wall": time.perf_counter() - t0, "epochs": [m["epoch_time_s"] for m in record.metrics],
            "waits": [m["data_wait_s"] for m in record.metrics]}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA, else skip), cuda, cuda:N or cpu")
    ap.add_argument("--quick", action="store_true",
                    help="about 5 min on one H100 with 16 CPUs: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                              for k, v in QUICK.items()))
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
    ap.add_argument("--data-cache", default="", metavar="DIR",
                    help="where the distinct images' .beton files are kept between runs (default "
                         "$XDG_CACHE_HOME or ~/.cache, /dynconv/gpu_recipe); none: a temporary folder")
    ap.add_argument("--stall-seconds", type=float, default=300,
                    help="without a step, batch or epoch for this long, print every thread's stack to stderr "
                         "(again every as long); 0: no watchdog")
    ap.add_argument("--stall-exit", action="store_true", help=f"on a stall, exit with status {STALL_EXIT}")
    ap.add_argument("--fake-stall-after", type=int, default=0, metavar="STEPS",
                    help="rehearsal: every run sleeps --fake-stall-seconds in its training step STEPS")
    ap.add_argument("--fake-stall-seconds", type=float, default=0.0, metavar="S")
    if ap.parse_known_args(argv)[0].quick:
        ap.set_defaults(**QUICK)  # flags given as well still win
    return ap.parse_args(argv)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.device == "auto":
        if not torch.cuda.is_available():
            print("gpu_recipe: no CUDA device here, skipped (--device cpu runs it on the CPU as a check)")
            return
        a.device = "cuda"
    device = torch.device(a.device)
    compiles = [{"off": False, "on": True}[c.strip()] for c in a.compile.split(",")]
    log_to_stdout()  # dynconv's own epoch lines
    watchdog = Watchdog(a.stall_seconds, stage="start", exit_code=STALL_EXIT if a.stall_exit else None)
    progress = Progress(watchdog, a.fake_stall_after, a.fake_stall_seconds)
    with watchdog, tempfile.TemporaryDirectory() as tmp:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        progress.say(f"{name}, torch {torch.__version__}, {a.workers} loader threads on {os.cpu_count()} CPUs; "
                     f"{a.images:,} + {a.val_images:,} images, batch {a.batch}, {a.res_start}->{a.res_end} px, "
                     f"{a.epochs} epochs, compile {a.compile}; watchdog "
                     + (f"after {a.stall_seconds:g} s without progress" if a.stall_seconds > 0 else "off"))
        tmp = Path(tmp)
        progress.stage(f"writing data: {a.images:,} + {a.val_images:,} samples, {a.unique:,} distinct training "
                       f"images of {a.side} px")
        t0 = time.perf_counter()
        train, val = write_betons(tmp, a, progress)
        progress.say(f"data ready in {time.perf_counter() - t0:.1f} s")
        results = {}
        for compile in compiles:
            tag = "compile on" if compile else "compile off"
            for side, fn in (("bare FFCV + PyTorch", bare), ("dynconv train", dynconv)):
                run = f"{side}, {tag}"
                progress.stage(run)
                results[run] = fn(train, val, a, device, compile, tmp, progress, run)
                progress.say(f"{run}: done in {results[run]['wall']:.1f} s")
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
