"""The final calibration's share of the demo (``model.norm=recalibrate``): every subset's statistics from
``calibration.batches`` batches, before the last validation and the final checkpoint. Demo settings (the
embedded set, 3,000 training images of 64 px, batch 64, 7 subsets, ``launch/configs/demo.yaml``).

Trains the demo for ``--epochs`` epochs (its last one runs the final calibration), then times the final
calibration on the trained weights, interleaved: the one-pass path (each batch read once, every subset's
statistics from it) against the path before it (every batch read first, then subset after subset, the
statistics summed in three passes per norm layer), and checks both give the same statistics.

Share = final calibration (s) / (12 x mean demo epoch (s)), where the mean is over the epochs before the
last (the first left out when there are others: it compiles FFCV's pipeline); an epoch there includes
its cheap per-epoch calibration and validation, so 12 of them are the demo's training time.

    .venv/bin/python bench/final_calibration.py [--epochs 3] [--repeats 2] [--train-per-class 300]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from dynconv.calibration import calibrate_from_source
from dynconv.channel_select import forward_subset
from dynconv.data import scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset
from dynconv.launch.config import load_config
from dynconv.launch.demo import DEMO_CONFIG
from dynconv.launch.training import _calibration, run_training
from dynconv.launch.training_data import TrainingData
from dynconv.layers.subset_norm import SubsetBatchNorm2d, calibrate, subset_norms
from dynconv.run_files import MODEL
from dynconv.train import Hook, load_checkpoint
from dynconv.train.checkpoint import model_from_checkpoint
from dynconv.train.distributed import DistInfo

DEMO_EPOCHS = 12


def say(line: str) -> None:
    print(line, flush=True)


class Record(Hook):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics, checkpoint):
        self.epochs.append(dict(metrics, epoch=epoch))
        say(f"| {epoch} | {metrics['epoch_time_s']:.1f} | {metrics['calibration_time_s']:.2f} | "
            f"{int(metrics['calibration_images'])} |")


def _previous_statistics(self, x, weight, bias):
    """SubsetBatchNorm2d's calibration statistics before the one-pass change: sum, square-sum and count
    concatenated, then an evaluation-mode BatchNorm with them (the sums go to the same accumulator)."""
    dims = (0, 2, 3)
    stats = torch.cat([x.sum(dims), x.square().sum(dims), x.new_tensor([x.numel() / x.shape[1]])])
    c = x.shape[1]
    s1, s2, n = stats[:c], stats[c:2 * c], stats[2 * c]
    mean = s1 / n
    var = (s2 / n - mean.square()).clamp_min(0)
    self._accumulate(s1.double(), s2.double(), n.double())
    return torch.nn.functional.batch_norm(x, mean, var, weight, bias, False, 0.0, self.eps)


def previous_path(model, source, transform, subsets, num_batches) -> None:
    """The final calibration as it was: every batch read and transformed first, then subset after subset."""
    inputs = [transform(b) for b, *_ in islice(source.epoch(0, augment=False), num_batches)]
    new = SubsetBatchNorm2d._calibration_forward
    SubsetBatchNorm2d._calibration_forward = _previous_statistics
    try:
        calibrate(model, lambda subset: inputs, subsets, forward_subset)
    finally:
        SubsetBatchNorm2d._calibration_forward = new


def statistics_of(model) -> list[torch.Tensor]:
    return [t.clone() for m in subset_norms(model) for t in (m.subset_mean, m.subset_var)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="demo epochs to train (the demo has 12)")
    ap.add_argument("--repeats", type=int, default=2, help="timings of each path, interleaved")
    ap.add_argument("--train-per-class", type=int, default=300)
    a = ap.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    logging.getLogger("dynconv").setLevel(logging.INFO)  # the calibration's start and end lines
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "d", num_classes=10, train_per_class=a.train_per_class, val_per_class=30)
        for s in ("train", "val"):
            write_beton(scan_image_folder(root / s), root / f"{s}.beton", size=64, store="raw", num_workers=2)
        cfg = load_config(DEMO_CONFIG, [f"data.train={root / 'train.beton'}", f"data.val={root / 'val.beton'}",
                                        f"train.epochs={a.epochs}", f"run.dir={Path(tmp) / 'run'}",
                                        "tracking.enabled=false", "train.log_every_steps=0"])
        say(f"demo settings: {10 * a.train_per_class} training images, {a.epochs} of the demo's {DEMO_EPOCHS} "
            f"epochs, calibration.batches={cfg.calibration.batches}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} CPUs")
        say("| epoch | epoch (s) | calibration (s) | images per subset |")
        say("|---:|---:|---:|---:|")
        record = Record()
        run_training(cfg, hooks=[record])

        # the trainer's own calibration source, transform and subsets, on the trained weights
        device, dist = torch.device("cpu"), DistInfo()
        data = TrainingData.plan(cfg)
        data.open(device, dist)
        hook = _calibration(cfg, data, device, dist, data.score_every_epoch())
        model = model_from_checkpoint(load_checkpoint(Path(cfg.run.dir) / MODEL))
        args = (model, hook.source, hook.transform, hook.all, hook.final_batches)
        for _ in islice(hook.source.epoch(0, augment=False), hook.final_batches):  # a new loader compiles first
            pass
        times = {"one pass": [], "before": []}
        say("| final calibration | run | seconds |")
        say("|---|---:|---:|")
        for r in range(a.repeats):
            for name in times:
                t0 = time.perf_counter()
                if name == "one pass":
                    calibrate_from_source(*args, progress=True)
                else:
                    previous_path(*args)
                times[name].append(time.perf_counter() - t0)
                say(f"| {name} | {r + 1} | {times[name][-1]:.1f} |")
                got = statistics_of(model)
                if name == "one pass":
                    new_stats = got
        diff = max(((g - n).abs() / (n.abs() + 1e-3)).max().item() for g, n in zip(got, new_stats))

    epochs = record.epochs
    regular = epochs[1:-1] or epochs[:-1]
    epoch_s = statistics.mean(m["epoch_time_s"] for m in regular) if regular else float("nan")
    demo_s = DEMO_EPOCHS * epoch_s
    new, old = min(times["one pass"]), min(times["before"])
    in_run = epochs[-1]["calibration_time_s"]
    say("")
    say(f"mean demo epoch {epoch_s:.1f} s (epochs {', '.join(str(m['epoch']) for m in regular)}), "
        f"demo training time = {DEMO_EPOCHS} x {epoch_s:.1f} = {demo_s:.0f} s; times are the best of "
        f"{a.repeats}")
    say("| final calibration | seconds | share of the demo | before ÷ this |")
    say("|---|---:|---:|---:|")
    say(f"| before (read all, subset after subset) | {old:.1f} | {100 * old / demo_s:.1f} % | 1.00 |")
    say(f"| one pass | {new:.1f} | **{100 * new / demo_s:.1f} %** | **{old / new:.2f}** |")
    say(f"| one pass, in the trainer's last epoch | {in_run:.1f} | {100 * in_run / demo_s:.1f} % | "
        f"{old / in_run:.2f} |")
    say(f"Goal: the final calibration ≤ 5 % of the demo's training time. Statistics of the two paths: "
        f"largest relative difference {diff:.1e}.")


if __name__ == "__main__":
    main()
