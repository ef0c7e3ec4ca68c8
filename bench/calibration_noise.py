"""How far the per-epoch subset accuracies move with the number of images the per-validation calibration
uses (``calibration.epoch_batches``), against statistics from ``calibration.batches`` batches (the
final ones). Demo settings (the embedded set, 3,000 training images of 64 px, batch 64,
``launch/configs/demo.yaml``); the model after epoch 1 of a 2-epoch run (mid-training, where sweeps read
these accuracies), for each seed. Each size is drawn from several epochs' batches (different images), so
the table shows the noise of the estimate itself.

    .venv/bin/python bench/calibration_noise.py [--seeds 2] [--draws 3] [--batches 1,2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from itertools import islice
from pathlib import Path

import torch

from dynconv.channel_select import forward_subset
from dynconv.channels import all_subsets
from dynconv.data import BatchTransform, build_source, scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.data.synth import write_dataset
from dynconv.evaluate import subset_accuracies
from dynconv.layers.subset_norm import calibrate
from dynconv.launch.config import load_config
from dynconv.launch.demo import DEMO_CONFIG
from dynconv.launch.training import run_training
from dynconv.train.checkpoint import load_checkpoint, model_from_checkpoint


def accuracies(model, train, val, transform, subsets, channels, epoch: int, batches: int) -> dict[str, float]:
    """Per-subset validation accuracy after calibrating from ``batches`` batches of epoch ``epoch``."""
    inputs = [transform(x) for x, _ in islice(train.epoch(epoch, augment=False), batches)]
    calibrate(model, lambda s: inputs, subsets, forward_subset)
    accs = subset_accuracies(model, val.epoch(0), transform, subsets, channels, torch.device("cpu"))
    return {k: v for k, v in accs.items() if k.startswith("val_acc_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--batches", default="1,2", help="calibration.epoch_batches values to compare")
    a = ap.parse_args()
    sizes = [int(b) for b in a.batches.split(",")]
    rows = {b: [] for b in sizes}
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp) / "d", num_classes=10, train_per_class=300, val_per_class=30)
        for s in ("train", "val"):
            write_beton(scan_image_folder(root / s), root / f"{s}.beton", size=64, store="raw", num_workers=2)
        for seed in range(a.seeds):
            run_dir = Path(tmp) / f"run{seed}"
            cfg = load_config(DEMO_CONFIG, [f"data.train={root / 'train.beton'}", f"data.val={root / 'val.beton'}",
                                            "train.epochs=2", f"train.seed={seed}", f"run.dir={run_dir}",
                                            "tracking.enabled=false", "train.log_every_steps=0",
                                            "train.keep_checkpoints=2"])
            run_training(cfg)
            ckpt = load_checkpoint(run_dir / "checkpoints" / "epoch_0001.pt")
            model = model_from_checkpoint(ckpt).eval()
            manifest = ckpt["dynconv"]
            channels, size = manifest["channels"], manifest["image_size"]
            transform = BatchTransform(manifest["mean"], manifest["std"], torch.device("cpu"))
            train = build_source(root / "train.beton", image_size=size, batch_size=cfg.train.batch_size,
                                 num_workers=2, train=True, seed=seed)
            val = build_source(root / "val.beton", image_size=size, batch_size=cfg.train.batch_size, num_workers=2)
            subsets = all_subsets(len(channels))
            ref = accuracies(model, train, val, transform, subsets, channels, 0, cfg.calibration.batches)
            for b in sizes:
                for draw in range(a.draws):
                    got = accuracies(model, train, val, transform, subsets, channels, draw, b)
                    rows[b].extend(abs(got[k] - ref[k]) for k in ref)
            print(f"seed {seed}: reference ({cfg.calibration.batches} batches) "
                  + ", ".join(f"{k[8:]} {100 * v:.1f}" for k, v in ref.items()))
    print("| calibration.epoch_batches | images per subset | mean abs. diff (points) | max (points) | "
          "subset x draw x seed |")
    print("|---:|---:|---:|---:|---:|")
    for b, diffs in rows.items():
        print(f"| {b} | {64 * b} | {100 * statistics.mean(diffs):.2f} | {100 * max(diffs):.2f} | {len(diffs)} |")
    print("Difference of each subset's validation accuracy from its accuracy with the final statistics.")


if __name__ == "__main__":
    main()
