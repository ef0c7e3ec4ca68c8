"""``dynconv demo``: the embedded dataset, synthesised and converted to FFCV, then one training run of the
demo config with per-subset evaluation and MLflow tracking (a local sqlite store)."""
from __future__ import annotations

import shutil
from pathlib import Path

from .config import load_config
from .training import run_training

DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def run_demo(out: str | Path, epochs: int | None = None, train_per_class: int = 300,
             overrides: list[str] = (), log=print) -> dict:
    """Everything below ``out``: ``data/`` (images and .beton files), ``runs/demo`` and ``runs/mlruns.db``."""
    from dynconv.data import scan_image_folder
    from dynconv.extras import require

    write_beton = require("ffcv", "dynconv.data.ffcv_io").write_beton
    from dynconv.data.synth import write_dataset

    out = Path(out)
    data = out / "data"
    if not (data / "train").is_dir():
        log(f"[1/4] synthesising the embedded colour+shape dataset into {data}")
        write_dataset(data, num_classes=10, train_per_class=train_per_class, val_per_class=30, size=64, seed=0,
                      overwrite=True)
    for split in ("train", "val"):
        beton = data / f"{split}.beton"
        if not beton.exists():
            log(f"[2/4] converting {split} to FFCV: {beton}")
            # stored as the folder loader sees them (64 x 64 raw pixels): both paths evaluate identically
            write_beton(scan_image_folder(data / split), beton, size=64, store="raw", num_workers=2)
    run_dir = out / "runs" / "demo"
    fixed = [f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}", f"run.dir={run_dir}",
             "train.resume=auto"]
    if epochs:
        fixed.append(f"train.epochs={epochs}")
    cfg = load_config(DEMO_CONFIG, fixed + list(overrides))
    if (run_dir / "model.pt").exists():
        shutil.rmtree(run_dir)  # the demo starts fresh; MLflow keeps the earlier run
    log(f"[3/4] training {cfg.model.name} for {cfg.train.epochs} epochs (CPU: a few minutes)")
    result = run_training(cfg)
    log("[4/4] per-subset evaluation on the validation split")
    return result
