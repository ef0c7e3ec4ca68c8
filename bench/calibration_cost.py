"""What measuring the model as evaluated costs: per-subset calibration before every validation
(``model.norm=recalibrate``) as a share of the epoch, at the demo's settings (the embedded data set, 3,000
training images of 64×64, batch 64, ``launch/configs/demo.yaml``). The last epoch calibrates every subset
from ``calibration.batches`` batches (the final statistics); the others from ``calibration.epoch_batches``.

    .venv/bin/python bench/calibration_cost.py [--epochs 3] [--train-per-class 300] [--calibration-batches N]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from dynconv.data import scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset
from dynconv.launch.config import load_config
from dynconv.launch.demo import DEMO_CONFIG
from dynconv.launch.training import run_training
from dynconv.train import Hook


class Record(Hook):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics, checkpoint):
        self.epochs.append(dict(metrics, epoch=epoch))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-per-class", type=int, default=300)
    ap.add_argument("--calibration-batches", type=int, default=None,
                    help="calibration.epoch_batches (default: the config's)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "d", num_classes=10, train_per_class=a.train_per_class, val_per_class=30)
        for s in ("train", "val"):
            write_beton(scan_image_folder(root / s), root / f"{s}.beton", size=64, store="raw", num_workers=2)
        record = Record()
        cfg = load_config(DEMO_CONFIG, [f"data.train={root / 'train.beton'}", f"data.val={root / 'val.beton'}",
                                        f"train.epochs={a.epochs}", f"run.dir={Path(tmp) / 'run'}",
                                        "tracking.enabled=false", "train.log_every_steps=0",
                                        *([f"calibration.epoch_batches={a.calibration_batches}"]
                                          if a.calibration_batches else [])])
        run_training(cfg, hooks=[record])
    print(f"demo settings ({10 * a.train_per_class} training images, norm={cfg.model.norm}, eval.every_epoch="
          f"{cfg.eval.every_epoch}), torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print("| epoch | images per subset | calibration (s) | epoch (s) | share |")
    print("|---:|---:|---:|---:|---:|")
    for m in record.epochs:
        share = m["calibration_time_s"] / m["epoch_time_s"]
        print(f"| {m['epoch']} | {int(m['calibration_images'])} | {m['calibration_time_s']:.2f} | "
              f"{m['epoch_time_s']:.1f} | {100 * share:.1f} % |")
    print("Goal: ≤ 5 % of the epoch in the epochs before the last (the last one computes the final statistics)")


if __name__ == "__main__":
    main()
