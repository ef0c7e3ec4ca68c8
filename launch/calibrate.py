"""`dynconv calibrate`: re-estimate per-subset BatchNorm statistics of a trained checkpoint."""
from __future__ import annotations

from pathlib import Path

from dynconv.calibration import calibrate_from_source
from dynconv.channels import all_subsets
from dynconv.choices import SUBSET_NORMS
from dynconv.data import BatchTransform, build_source
from dynconv.errors import DynconvError
from dynconv.train import atomic_torch_save, load_checkpoint
from dynconv.train.checkpoint import model_from_checkpoint

from .evaluation import check_classes, resolve_device


def run_calibrate(checkpoint: str, data: str, batches: int = 20, batch_size: int = 64, out: str | None = None,
                  seed: int = 0, num_workers: int = 2, device: str = "auto") -> Path:
    ckpt = load_checkpoint(checkpoint)
    manifest = ckpt["dynconv"]
    kwargs = manifest["model_kwargs"]
    if manifest.get("datasets"):
        raise DynconvError(f"{checkpoint} was trained on a mixture of datasets: 'dynconv calibrate' takes one dataset "
                           "and cannot calibrate it yet; training with model.norm=recalibrate calibrates every dataset")
    if kwargs["norm"] == "group":  # every argument is recorded (older checkpoints: resolved when loaded)
        raise DynconvError(f"{checkpoint} uses GroupNorm (model.norm=group): it keeps no statistics to calibrate")
    model = model_from_checkpoint(ckpt, checkpoint)
    if kwargs["norm"] not in SUBSET_NORMS:  # shared BatchNorm becomes per-subset BatchNorm: so says the manifest
        model.setup_norm("recalibrate")
        manifest = {**manifest, "model_kwargs": {**kwargs, "norm": "recalibrate"}}
    dev = resolve_device(device)
    source = build_source(Path(data), image_size=manifest["image_size"], batch_size=batch_size,
                          num_workers=num_workers, train=True, seed=seed)
    check_classes(source, kwargs["num_classes"], manifest.get("classes"), f"data {data}")
    model.to(dev)
    n = calibrate_from_source(model, source, BatchTransform(manifest["mean"], manifest["std"], dev),
                              all_subsets(manifest["channels"]), batches, progress=True)
    target = Path(out) if out else Path(checkpoint).with_suffix(".calibrated.pt")
    atomic_torch_save({"dynconv": manifest, "model": model.state_dict(), "epoch": ckpt.get("epoch")}, target)
    print(f"calibrated {len(all_subsets(manifest['channels']))} subsets on {n} images each")
    return target
