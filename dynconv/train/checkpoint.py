"""Checkpoint files: atomic writes, safe (``weights_only``) loads, a manifest describing the model."""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import DynconvError
from ..fileio import atomic_writer

FORMAT_VERSION = 1
# epoch_0003.pt: epoch 3 complete; epoch_0003_step_000020.pt: 20 steps into epoch 3
_CKPT_FILE = re.compile(r"epoch_(\d+)(?:_step_(\d+))?\.pt$")


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` that never leaves a partial file under ``path`` (see :func:`atomic_writer`)."""
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a dynconv checkpoint without executing any pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise DynconvError(f"checkpoint {path} does not exist: pass a file written by 'dynconv train' (run.dir/model.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise DynconvError(f"{path} is not a loadable dynconv checkpoint ({str(e).splitlines()[0][:120]})") from None
    manifest = ckpt.get("dynconv") if isinstance(ckpt, dict) else None
    if not isinstance(manifest, dict):
        raise DynconvError(f"{path} is not a dynconv checkpoint (no 'dynconv' manifest): pass a file written by 'dynconv train'")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DynconvError(f"{path} has checkpoint format {manifest['format_version']}, newer than this dynconv "
                           f"({FORMAT_VERSION}): upgrade dynconv")
    return ckpt


def epoch_checkpoint(run_dir: Path, epoch: int, step: int | None = None) -> Path:
    name = f"epoch_{epoch:04d}.pt" if step is None else f"epoch_{epoch:04d}_step_{step:06d}.pt"
    return run_dir / "checkpoints" / name


def _ordered(run_dir: str | Path) -> list[Path]:
    """Checkpoints oldest to newest: a mid-epoch one sorts after the previous epoch, before its own end."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("epoch_*.pt"):
        if m := _CKPT_FILE.search(p.name):
            found.append(((int(m.group(1)), int(m.group(2)) if m.group(2) else float("inf")), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``run_dir`` that loads; broken ones are skipped with a warning."""
    for path in reversed(_ordered(run_dir)):
        try:
            load_checkpoint(path)
            return path
        except DynconvError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    return None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for path in _ordered(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def make_manifest(model_name: str, model_kwargs: dict, channels: str, image_size: int, mean, std,
                  classes: list[str] | None) -> dict:
    return {"format_version": FORMAT_VERSION, "model": model_name, "model_kwargs": dict(model_kwargs),
            "channels": channels, "image_size": int(image_size), "mean": list(mean), "std": list(std),
            "classes": list(classes) if classes else None}


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint", expect_model: str | None = None):
    """Rebuild the model a checkpoint describes and load its weights."""
    from ..models import create_model

    manifest = ckpt["dynconv"]
    if expect_model and expect_model != manifest["model"]:
        raise DynconvError(f"{path} holds a {manifest['model']} model, not {expect_model}: pass a checkpoint of "
                           f"{expect_model} or drop the model option")
    model = create_model(manifest["model"], **manifest["model_kwargs"])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise DynconvError(f"{path}: weights do not fit model {manifest['model']} "
                           f"({str(e).splitlines()[0][:100]}...)") from None
    return model
