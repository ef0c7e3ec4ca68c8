"""FFCV: write ``.beton`` files and read them back. The only module of dynconv that imports ffcv."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DynconvError
from .folder import FolderIndex, load_rgb

BETON_FIELDS = ("image", "label")


class _FolderForWriter:
    """Indexed dataset for ``DatasetWriter``: (HWC uint8 RGB array, label) pairs."""

    def __init__(self, index: FolderIndex, max_side: int | None):
        self.index, self.max_side = index, max_side

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, i: int):
        path, label = self.index.samples[i]
        img = load_rgb(path)
        if self.max_side and max(img.size) > self.max_side:
            img.thumbnail((self.max_side, self.max_side))
        return np.asarray(img), label


def sidecar_path(beton: Path) -> Path:
    return beton.with_name(beton.name + ".json")


def write_beton(index: FolderIndex, out: str | Path, max_side: int = 256, jpeg_quality: int = 90,
                num_workers: int = 2) -> Path:
    """Write ``index`` to ``out`` (a ``.beton``) plus ``out.json`` with class names and counts.

    FFCV shows its own progress bar. The file is written under a temporary name and renamed into
    place when complete, so a failed conversion never leaves a half file under ``out``.
    """
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    out = Path(out)
    if out.suffix != ".beton":
        raise DynconvError(f"output {out} must end in .beton")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fields = {"image": RGBImageField(write_mode="jpg", max_resolution=max_side, jpeg_quality=jpeg_quality),
              "label": IntField()}
    try:
        DatasetWriter(str(tmp), fields, num_workers=max(1, num_workers)).from_indexed_dataset(
            _FolderForWriter(index, max_side))
        meta = {"classes": index.classes, "num_samples": len(index.samples), "source": str(index.root),
                "fields": list(BETON_FIELDS), "skipped": len(index.skipped)}
        side_tmp = sidecar_path(tmp)
        side_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
        os.replace(side_tmp, sidecar_path(out))
    finally:
        for p in (tmp, sidecar_path(tmp)):
            p.unlink(missing_ok=True)
    return out


def read_beton_meta(path: Path) -> dict:
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.exists() else {}


def ffcv_loader(path: Path, image_size: int, batch_size: int, num_workers: int, shuffle: bool,
                seed: int, drop_last: bool, os_cache: bool = True):
    """An FFCV ``Loader`` yielding ``(uint8 NCHW images, int64 labels)`` on the CPU."""
    from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.reader import Reader
    from ffcv.transforms import Squeeze, ToTensor, ToTorchImage

    try:
        reader = Reader(str(path))
        names = set(reader.handlers)
    except Exception as e:  # ffcv raises assorted errors on a foreign or truncated file
        raise DynconvError(f"{path} is not a readable FFCV .beton file ({e.__class__.__name__}): re-create it with 'dynconv convert'") from None
    if not set(BETON_FIELDS) <= names:
        raise DynconvError(f"{path} has fields {sorted(names)}, expected {list(BETON_FIELDS)}: re-create it with 'dynconv convert'")
    pipelines = {
        "image": [CenterCropRGBImageDecoder((image_size, image_size), ratio=1.0), ToTensor(), ToTorchImage()],
        "label": [IntDecoder(), ToTensor(), Squeeze(1)],
    }
    return Loader(str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=os_cache,
                  order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, seed=seed,
                  pipelines=pipelines, drop_last=drop_last and reader.num_samples >= batch_size)

