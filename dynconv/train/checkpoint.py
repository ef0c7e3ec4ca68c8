"""Checkpoint files: atomic writes, safe (``weights_only``) loads, a manifest describing the model."""
from __future__ import annotations

import json
import pickle
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import DynconvError
from ..fileio import atomic_writer

FORMAT_VERSION = 1
# epoch_0003.pt: epoch 3 complete; epoch_0003_step_000020.pt: 20 steps into epoch 3. DeepSpeed checkpoints
# are folders of the same names without ".pt" (written as .tmp-<name>, renamed when complete)
_CKPT_FILE = re.compile(r"epoch_(\d+)(?:_step_(\d+))?(\.pt)?")
DS_SIDECAR = "dynconv.json"  # in a DeepSpeed checkpoint folder: manifest, epoch, step, world size; written last


def atomic_torch_save(obj, path: str | Path) -> Path:
    """``torch.save`` that never leaves a partial file under ``path`` (see :func:`atomic_writer`)."""
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a dynconv checkpoint without executing any pickled code (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        inside = next((p for p in (path / "model.pt", path / "checkpoints") if p.exists()), None)
        hint = f"e.g. {path / 'model.pt'}" if inside is not None else "run.dir/model.pt"
        raise DynconvError(f"checkpoint {path} is a folder, not a checkpoint file: pass a file written by "
                           f"'dynconv train', {hint} (a DeepSpeed checkpoint folder: 'dynconv export' it first)")
    if not path.is_file():
        raise DynconvError(f"checkpoint {path} does not exist: pass a file written by 'dynconv train' (run.dir/model.pt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # a pickle that would run code, or a class outside plain tensors and data
        raise DynconvError(_text_file_message(path) or
                           f"{path} is not a loadable dynconv checkpoint (it holds objects other than tensors and "
                           "plain data; dynconv refuses to unpickle them)") from None
    except Exception:  # RuntimeError, EOFError, BadZipFile, ...; garbage makes the unpickler fail in any way (KeyError)
        raise DynconvError(_text_file_message(path) or
                           f"{path} is not a loadable dynconv checkpoint (not a PyTorch file, or cut short): pass a "
                           "file written by 'dynconv train', such as run.dir/model.pt") from None
    manifest = ckpt.get("dynconv") if isinstance(ckpt, dict) else None
    if not isinstance(manifest, dict):
        raise DynconvError(f"{path} is not a dynconv checkpoint (no 'dynconv' manifest): pass a file written by 'dynconv train'")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DynconvError(f"{path} has checkpoint format {manifest['format_version']}, newer than this dynconv "
                           f"({FORMAT_VERSION}): upgrade dynconv")
    resolve_manifest(manifest)
    return ckpt


def _text_file_message(path: Path) -> str | None:
    """What to say of a text file passed as a checkpoint (a config, a report), or None for any other file."""
    try:
        with path.open("rb") as f:
            head = f.read(1 << 20)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if "\0" in text:
        return None
    from ..fileio import parse_yaml

    try:
        data = parse_yaml(text)
    except Exception:  # not YAML either: a text file all the same
        data = None
    sections = isinstance(data, dict) and data and all(isinstance(v, dict) or v is None for v in data.values())
    if path.suffix.lower() in (".yaml", ".yml") or sections:  # data:, model:, train:, ... : a training config
        run = (data.get("run") or {}) if isinstance(data, dict) else {}
        run_dir = run.get("dir") if isinstance(run, dict) and isinstance(run.get("dir"), str) else "run.dir"
        return (f"{path} is a config file, not a checkpoint: train with it ('dynconv train --config {path}'), "
                f"then pass the model it writes ({run_dir}/model.pt)")
    return (f"{path} is a text file{f' ({path.suffix})' if path.suffix else ''}, not a checkpoint: pass a file written "
            "by 'dynconv train', such as run.dir/model.pt")


def resolve_manifest(manifest: dict) -> dict:
    """Fill in the builder's defaults a manifest's ``model_kwargs`` lacks (checkpoints written before dynconv
    recorded every resolved value kept only the arguments that were set), in place: readers find every
    argument the model was built with. A model no longer registered is left as it is (building it says so)."""
    from ..models import list_models, resolve_model_kwargs

    if manifest.get("model") in list_models():
        manifest["model_kwargs"] = resolve_model_kwargs(manifest["model"], **manifest.get("model_kwargs", {}))
    return manifest


def epoch_checkpoint(run_dir: Path, epoch: int, step: int | None = None) -> Path:
    name = f"epoch_{epoch:04d}.pt" if step is None else f"epoch_{epoch:04d}_step_{step:06d}.pt"
    return run_dir / "checkpoints" / name


def _ordered(run_dir: str | Path) -> list[Path]:
    """Checkpoints (files and DeepSpeed folders) oldest to newest: a mid-epoch one sorts after the previous
    epoch, before its own end."""
    found = []
    for p in (Path(run_dir) / "checkpoints").glob("epoch_*"):
        if (m := _CKPT_FILE.fullmatch(p.name)) and bool(m.group(3)) != p.is_dir():
            found.append(((int(m.group(1)), int(m.group(2)) if m.group(2) else float("inf")), p))
    return [p for _, p in sorted(found)]


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """A folder written by DeepSpeed's ``save_checkpoint`` (one tag): it holds ``*_model_states.pt``."""
    path = Path(path)
    return path.is_dir() and any(path.glob("*model_states.pt"))


def read_deepspeed_sidecar(path: str | Path) -> dict:
    """The dynconv record of a complete DeepSpeed checkpoint folder; a DynconvError if it is incomplete
    (no record, or a file cut short) or not a DeepSpeed checkpoint."""
    path = Path(path)
    if not is_deepspeed_checkpoint(path):
        raise DynconvError(f"{path} is not a DeepSpeed checkpoint folder (no *_model_states.pt in it)")
    try:
        record = json.loads((path / DS_SIDECAR).read_text())
    except (OSError, ValueError) as e:
        raise DynconvError(f"{path} is incomplete: its {DS_SIDECAR} is missing or unreadable ({e.__class__.__name__})") from None
    for f in path.glob("*.pt"):
        try:
            zipfile.ZipFile(f).close()  # torch.save writes zip archives; a truncated one has no central directory
        except (zipfile.BadZipFile, OSError):
            raise DynconvError(f"{path} is incomplete: {f.name} is truncated or unreadable") from None
    optim = len(list(path.glob("*optim_states.pt")))
    if optim and optim != record.get("world_size", optim):
        raise DynconvError(f"{path} is incomplete: {optim} optimizer shard(s) for {record['world_size']} processes")
    resolve_manifest(record["dynconv"])
    return record


def checkpoint_manifest(path: str | Path) -> dict:
    """The ``dynconv`` manifest of a checkpoint file or DeepSpeed checkpoint folder (checked as loadable)."""
    if Path(path).is_dir():
        return read_deepspeed_sidecar(path)["dynconv"]
    return load_checkpoint(path)["dynconv"]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint in ``run_dir`` (file or DeepSpeed folder) that loads; broken ones are skipped
    with a warning."""
    for path in reversed(_ordered(run_dir)):
        try:
            checkpoint_manifest(path)
            return path
        except DynconvError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    return None


def remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; also remove DeepSpeed folders left half-written (``.tmp-*``)."""
    for path in _ordered(run_dir)[:-keep] if keep > 0 else []:
        remove_checkpoint(path)
    for path in (Path(run_dir) / "checkpoints").glob(".tmp-epoch_*"):
        remove_checkpoint(path)


def make_manifest(model_name: str, model_kwargs: dict, channels: str, image_size: int, mean, std,
                  classes: list[str] | None, datasets: list[dict] | None = None) -> dict:
    """What a checkpoint says about its model and data. A model trained on a mixture has no one normalisation:
    ``mean``/``std`` are None and ``datasets`` lists each dataset's ``{name, channels, mean, std}``."""
    manifest = {"format_version": FORMAT_VERSION, "model": model_name, "model_kwargs": dict(model_kwargs),
                "channels": channels, "image_size": int(image_size), "mean": None if mean is None else list(mean),
                "std": None if std is None else list(std), "classes": list(classes) if classes else None}
    if datasets:
        manifest["datasets"] = datasets
    return manifest


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
