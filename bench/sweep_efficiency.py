"""Compute of an ASHA sweep ÷ the exhaustive grid over the same space, and the best result each finds.
Goal: ≤ 0.4 of the grid's trial-epochs for a best result within 1 point.

Both sweeps run the same grid of configs (learning rate × channel-dropout schedule) on the same small
synthetic problem through `dynconv.launch.sweep.run_sweep`: FIFO trains every config for every epoch, ASHA stops
trials at its rungs. Trials are seeded, so a config that ASHA trains to the end scores exactly what it
scores in the grid; what the bench measures is how much training ASHA skips and whether it kept the best
config (or one within 1 point) alive. Compute is counted in trial-epochs (epochs trained, summed over
trials); wall time also counts Ray and per-trial start-up, which dominate on tiny problems.

    .venv/bin/python bench/sweep_efficiency.py [--epochs 9] [--reduction-factor 3] [--out DIR] [--keep]
"""
from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).parents[1] / "launch" / "configs" / "demo.yaml"
SPACE = """\
train.lr: {grid: [0.001, 0.003, 0.01, 0.03]}
dropout.kind: {grid: [none, constant, uniform_subsets]}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--grace-period", type=int, default=1)
    ap.add_argument("--reduction-factor", type=float, default=3)
    ap.add_argument("--metric", default="worst_subset_acc")
    ap.add_argument("--out", default=None, help="keep data and sweeps here (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the sweep folders (checkpoints: ~0.25 GB per trial)")
    a = ap.parse_args()

    for name in ("alembic", "mlflow.store.db.utils"):  # MLflow's notes on creating its database
        logging.getLogger(name).setLevel(logging.WARNING)
    from dynconv.data.synth import write_dataset
    from dynconv.launch.sweep import run_sweep
    from dynconv.sweeps.spec import SweepOptions
    from dynconv.sweeps.tuner import init_ray

    root = Path(a.out or tempfile.mkdtemp(prefix="sweep-bench-"))
    data = root / "data"
    if not (data / "train").is_dir():
        write_dataset(data, num_classes=4, train_per_class=80, val_per_class=50, size=32, seed=0)
    space = root / "space.yaml"
    space.write_text(SPACE)
    overrides = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "model.num_classes=4",
                 "data.image_size=32", f"train.epochs={a.epochs}", "train.batch_size=32", "data.num_workers=0",
                 "model.norm=shared", "train.keep_checkpoints=1", "dropout.p=0.5"]
    started = init_ray(num_cpus=None)
    rows = []
    try:
        for name, scheduler in (("grid (FIFO)", "fifo"), ("ASHA", "asha")):
            out = root / scheduler
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            r = run_sweep(out, str(CONFIG), str(space), overrides,
                          SweepOptions(scheduler=scheduler, search="grid", metric=a.metric, grace_period=a.grace_period,
                                       reduction_factor=a.reduction_factor), verbose=0)
            rows.append({"method": name, "trials": len(r["rows"]), "trial_epochs": r["trial_epochs"],
                         "best": r["best"]["metric"], "params": r["best"]["params"], "wall": time.perf_counter() - t0,
                         "stopped": sum(not t["finished"] for t in r["rows"])})
            if not a.keep:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if started:
            import ray

            ray.shutdown()
        if not a.out and not a.keep:
            shutil.rmtree(root, ignore_errors=True)

    grid, asha = rows
    print(f"\n{grid['trials']} configs x {a.epochs} epochs, 4 classes x 80 training images at 32 px, "
          f"{a.metric} on 200 validation images; ASHA grace {a.grace_period}, reduction factor {a.reduction_factor:g}\n")
    print(f"| method | trials | stopped early | trial-epochs | ÷ grid | best {a.metric} (%) | Δ vs grid (points) "
          "| best config | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for r in rows:
        config = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"| {r['method']} | {r['trials']} | {r['stopped']} | {r['trial_epochs']} | "
              f"{r['trial_epochs'] / grid['trial_epochs']:.2f} | {100 * r['best']:.2f} | "
              f"{100 * (r['best'] - grid['best']):+.2f} | {config} | {r['wall']:.0f} |")
    ratio, gap = asha["trial_epochs"] / grid["trial_epochs"], 100 * (grid["best"] - asha["best"])
    met = ratio <= 0.4 and gap <= 1.0
    print(f"\ngoal (≤ 0.40 of the grid's trial-epochs, best within 1 point): {'met' if met else 'NOT met'} "
          f"({ratio:.2f}, {gap:.2f} points below the grid's best)")


if __name__ == "__main__":
    main()
