"""Scan and validate an ImageFolder dataset (``root/<class>/<image>``)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..errors import DynconvError


@dataclass
class FolderIndex:
    root: Path
    classes: list[str]
    samples: list[tuple[Path, int]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def report(self) -> str:
        """One line about skipped files, or '' when none were skipped."""
        if not self.skipped:
            return ""
        first = ", ".join(f"{p.name} ({why})" for p, why in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return f"skipped {len(self.skipped)} unreadable file(s) under {self.root}: {first}{more}"


ARRAY_SUFFIXES = (".npy", ".tif", ".tiff")  # N-channel images: H×W×C uint8 arrays


def is_array_file(path: Path) -> bool:
    return path.suffix.lower() in ARRAY_SUFFIXES


def load_array(path: Path) -> np.ndarray:
    """An H×W×C uint8 array from ``.npy`` or a TIFF stack (C×H×W stacks are transposed; 2-D gets C=1)."""
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        import tifffile

        arr = tifffile.imread(path)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ValueError(f"expected an H×W×C array, got shape {arr.shape}")
    if arr.shape[0] < min(arr.shape[1:]) and arr.shape[0] <= 16 and arr.shape[-1] > 16:  # C×H×W stack
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 values, got {arr.dtype}")
    return np.ascontiguousarray(arr)


def _check_image(path: Path) -> str | None:
    """``None`` if ``path`` opens as an image (or an N-channel array), else a short reason."""
    if is_array_file(path):
        try:
            load_array(path)
            return None
        except Exception as e:  # numpy and tifffile raise many types for foreign or truncated files
            return f"not a readable uint8 array: {str(e).splitlines()[0][:60]}"
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return "not an image" if isinstance(e, UnidentifiedImageError) else f"corrupt: {e.__class__.__name__}"


def missing_data_message(path: str | Path, key: str = "data path") -> str:
    """One line for a data set ``path`` that does not exist (``key``: what named it, e.g. ``data.train``):
    what to check, how to make a ``.beton``, and how to make a synthetic set to try things on."""
    path = Path(path)
    if path.suffix == ".beton":
        return (f"{key} {path} does not exist: create it from an image folder with 'dynconv convert IMAGE_FOLDER "
                f"{path}' (no images yet? 'dynconv data synth DIR' writes a synthetic set, DIR/train and DIR/val)")
    parent = path.parent
    if path.name in ("train", "val") and parent != Path(".") and not (parent.exists() and any(parent.iterdir())):
        synth = (f"make a synthetic data set there with 'dynconv data synth {parent}' (it writes {parent}/train and "
                 f"{parent}/val)")
    else:
        synth = "make a synthetic data set with 'dynconv data synth DIR' (it writes DIR/train and DIR/val)"
    return f"{key} {path} does not exist: check the path, or {synth}"


def scan_image_folder(root: str | Path, strict: bool = False) -> FolderIndex:
    """Index ``root/<class>/*`` (classes sorted by name, as torchvision's ImageFolder).

    Unreadable or non-image files are skipped and listed in ``FolderIndex.skipped`` — or, with
    ``strict=True``, are an error. A missing root, a root without class folders or an empty class
    folder is always an error.
    """
    root = Path(root)
    if not root.exists():
        raise DynconvError(missing_data_message(root))
    if not root.is_dir():
        raise DynconvError(f"data path {root} is neither a folder of class folders nor a .beton file")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DynconvError(f"{root} has no class folders: expected {root}/<class>/<image files>")
    index = FolderIndex(root, classes, [])
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        kept = 0
        for path in files:
            why = _check_image(path)
            if why is None:
                index.samples.append((path, label))
                kept += 1
            elif strict:
                raise DynconvError(f"{path} is {why}: remove it, or drop --strict to skip such files")
            else:
                index.skipped.append((path, why))
        if kept == 0:
            raise DynconvError(f"class folder {root / name} has no readable images: add images or remove the folder")
    if index.skipped:
        warnings.warn(index.report(), stacklevel=2)
    return index


def load_rgb(path: Path) -> Image.Image:
    """Open any image as 3-channel RGB (grayscale is replicated, alpha dropped)."""
    with Image.open(path) as im:
        return im.convert("RGB")


def load_sample(path: Path) -> torch.Tensor:
    """uint8 C×H×W: N-channel arrays as stored, other images as RGB."""
    arr = load_array(path) if is_array_file(path) else np.array(load_rgb(path))
    return torch.from_numpy(arr).permute(2, 0, 1)


def num_channels(index: FolderIndex) -> int:
    """Channels of the dataset (of its first sample); every array must agree."""
    return int(load_sample(index.samples[0][0]).shape[0])


def square_resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square of the short side, then resize to ``size``×``size`` (uint8 CHW).

    The same geometry as FFCV's ``CenterCropRGBImageDecoder(ratio=1)`` used on the FFCV path.
    """
    h, w = img.shape[-2:]
    side = min(h, w)
    if (h, w) != (side, side):
        img = TF.center_crop(img, [side, side])
    if side != size:
        img = TF.resize(img, [size, size], antialias=True)
    return img


class ImageFolderDataset(Dataset):
    """Decoded uint8 CHW images of a fixed size, with integer labels. With ``augment`` (a
    ``SampleAugment``) a key ``(i, epoch)`` returns sample ``i`` augmented with that epoch's draws
    (``epoch=None``: not augmented); a plain index is never augmented."""

    def __init__(self, index: FolderIndex, image_size: int, augment=None):
        self.index, self.image_size, self.augment = index, image_size, augment

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, key: int | tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        path, label = self.index.samples[i]
        img = square_resize(load_sample(path), self.image_size)
        if self.augment is not None and epoch is not None:
            img = self.augment(img[None], epoch, [i])[0]
        return img, label
