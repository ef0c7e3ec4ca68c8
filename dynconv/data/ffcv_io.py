"""FFCV: write ``.beton`` files and read them back. The only module of dynconv that imports ffcv."""
from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

# importing ffcv runs Compiler.set_num_threads(1), which also sets torch's intra-op threads to 1: CPU training
# in this process would use one core. Note the count first (unless ffcv is already imported) and put it back.
_TORCH_THREADS = None if "ffcv.pipeline.compiler" in sys.modules else torch.get_num_threads()


def _import_ffcv() -> None:
    """Import ffcv with its table of image modes as a plain dict. FFCV builds that table
    (``IMAGE_MODES = numba.typed.Dict(); IMAGE_MODES['jpg'] = 0; ...``) at import, and the first item set
    compiles numba's typed-dict machinery: ~6.4 s of CPU at the start of every process that imports ffcv
    (each training, each DDP rank, each Slurm task). FFCV reads the table from Python only, never inside
    compiled code, so a dict is the same table."""
    if "ffcv" in sys.modules:
        return
    import numba.typed

    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict  # ffcv's __init__ imports every field (ffcv.memory_managers imports Dict unused)
    try:
        import ffcv  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


_import_ffcv()

from ffcv.pipeline.allocation_query import AllocationQuery  # noqa: E402
from ffcv.pipeline.operation import Operation  # noqa: E402

from ..choices import BETON_STORES, check_choice  # noqa: E402
from ..errors import DynconvError  # noqa: E402
from .augment import SampleAugment, normalization_table, pixel_maps  # noqa: E402
from .flip_normalize import flip_images  # noqa: E402
from .folder import FolderIndex, is_array_file, load_rgb, load_sample, square_resize  # noqa: E402
from .stats import BETON_SAMPLES, channel_stats  # noqa: E402

BETON_FIELDS = ("image", "label")


def _keep_torch_threads() -> None:
    """FFCV sizes its numba thread pool with ``Compiler.set_num_threads(num_workers)``, which also calls
    ``torch.set_num_threads`` — once to 1 when ffcv is imported, then at the start of every epoch from its loader
    thread — and so caps the training process's own intra-op threads at ``data.num_workers`` on a many-core
    node (at 1 before the first epoch). Let it set numba's pool only, and undo the import's reset."""
    import numba
    from ffcv.pipeline.compiler import Compiler

    def set_num_threads(cls, n):
        n = n if n >= 1 else os.cpu_count() or 1
        cls.num_threads = n
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))

    Compiler.set_num_threads = classmethod(set_num_threads)
    if _TORCH_THREADS is not None:
        torch.set_num_threads(_TORCH_THREADS)


_keep_torch_threads()


def numba_finalizer_filter(previous):
    """An ``unraisablehook``: numba's dispatcher finaliser raises KeyError when the pipelines FFCV compiled are
    collected (at exit, or between runs in one process), one "Exception ignored in: <finalize object ...>"
    traceback each. Drop exactly those; every other unraisable exception goes to ``previous``."""
    def hook(unraisable):
        tb = unraisable.exc_traceback
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = tb.tb_frame.f_code.co_filename if tb is not None else ""
        if unraisable.exc_type is KeyError and where.endswith(os.path.join("numba", "core", "dispatcher.py")):
            return
        previous(unraisable)

    return hook


sys.unraisablehook = numba_finalizer_filter(sys.unraisablehook)


class _FolderForWriter:
    """Indexed dataset for ``DatasetWriter``: (HWC uint8 RGB image, label) pairs, or for N-channel arrays
    (C×S×S uint8 array, label) with every array centre-cropped and resized to ``max_side``.

    FFCV's writer waits forever for a worker that died, so a file that cannot be read (changed or removed
    since the scan) never raises here: it is recorded in ``failed`` (shared with the worker processes) and
    stands in as a black placeholder; ``write_beton`` then discards the whole file."""

    def __init__(self, index: FolderIndex, max_side: int | None, arrays: bool, channels: int, square: bool = False):
        self.index, self.max_side, self.arrays, self.channels = index, max_side, arrays, channels
        self.square = square  # RGB images too: centre-crop and resize to max_side x max_side, as the folder path
        self.failed = multiprocessing.Value("q", -1)  # index of the first unreadable sample

    def __len__(self) -> int:
        return len(self.index.samples)

    def load(self, i: int) -> np.ndarray:
        path = self.index.samples[i][0]
        if self.arrays:
            return square_resize(load_sample(path), self.max_side).numpy()
        if self.square:
            return np.ascontiguousarray(square_resize(load_sample(path), self.max_side).permute(1, 2, 0).numpy())
        img = load_rgb(path)
        if self.max_side and max(img.size) > self.max_side:
            img.thumbnail((self.max_side, self.max_side))
        return np.asarray(img)

    def load_chw(self, i: int) -> np.ndarray:
        x = self.load(i)
        return x if self.arrays else x.transpose(2, 0, 1)

    def __getitem__(self, i: int):
        try:
            return self.load(i), self.index.samples[i][1]
        except Exception:  # PIL, numpy and tifffile raise many types for unreadable files
            with self.failed.get_lock():
                if self.failed.value < 0:
                    self.failed.value = i
            shape = (self.channels, self.max_side, self.max_side) if self.arrays else (1, 1, 3)
            return np.zeros(shape, np.uint8), self.index.samples[i][1]

    def check(self) -> None:
        """Raise for the first sample that could not be read during the conversion."""
        i = self.failed.value
        if i < 0:
            return
        try:
            self.load(i)
            why = "read error"
        except Exception as e:
            why = e.__class__.__name__
        raise DynconvError(f"{self.index.samples[i][0]} could not be read while converting ({why}): fix or "
                           "remove it, then run 'dynconv convert' again")


def sidecar_path(beton: Path) -> Path:
    return beton.with_name(beton.name + ".json")


def write_beton(index: FolderIndex, out: str | Path, max_side: int = 256, jpeg_quality: int = 90,
                num_workers: int = 2, size: int | None = None, store: str = "jpg") -> Path:
    """Write ``index`` to ``out`` (a ``.beton``) plus ``out.json`` with class names and counts.

    RGB images are stored as JPEG (``store="jpg"``, at ``jpeg_quality``) or as raw pixels (``"raw"``),
    at most ``max_side`` on their long side; with ``size`` every image is first centre-cropped and resized
    to ``size``×``size`` exactly as the image-folder loader does (``square_resize``), so that training or
    evaluating at ``data.image_size=size`` from the ``.beton`` sees the folder path's pixels — identical
    with ``store="raw"``, up to the JPEG re-encoding with ``"jpg"``.

    The sidecar also holds the per-channel mean and std of the stored pixels (0..1; of at most
    :data:`~dynconv.data.stats.BETON_SAMPLES` evenly spaced images, before JPEG encoding), which
    ``data.mean=auto``/``data.std=auto`` normalise with.

    FFCV shows its own progress bar. The file is written under a temporary name and renamed into
    place when complete, so a failed conversion never leaves a half file under ``out``.
    """
    from ffcv.fields import IntField, NDArrayField, RGBImageField
    from ffcv.writer import DatasetWriter

    out = Path(out)
    if out.suffix != ".beton":
        raise DynconvError(f"output {out} must end in .beton")
    kinds = {is_array_file(p) for p, _ in index.samples}
    if len(kinds) > 1:
        raise DynconvError(f"{index.root} mixes images and .npy/.tif arrays: keep one kind per dataset")
    arrays = kinds == {True}
    channels = 3
    if arrays:  # N-channel arrays: a fixed-shape uint8 field, lossless
        channels = int(load_sample(index.samples[0][0]).shape[0])
        bad = next((p for p, _ in index.samples if load_sample(p).shape[0] != channels), None)
        if bad is not None:
            raise DynconvError(f"{bad} has {load_sample(bad).shape[0]} channels, the dataset {channels}: "
                               "give every array the same channels")
        side = size or max_side  # every array is stored at this side (the field's shape is fixed)
        image_field = NDArrayField(np.dtype("uint8"), (channels, side, side))
    else:
        check_choice(store, BETON_STORES, "image store")
        image_field = RGBImageField(write_mode=store, max_resolution=size or max_side, jpeg_quality=jpeg_quality)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fields = {"image": image_field, "label": IntField()}
    source = _FolderForWriter(index, size or max_side, arrays, channels, square=bool(size))
    try:
        DatasetWriter(str(tmp), fields, num_workers=max(1, num_workers)).from_indexed_dataset(source)
        source.check()
        mean, std = channel_stats(len(source), source.load_chw, BETON_SAMPLES)  # for data.mean/std=auto
        meta = {"classes": index.classes, "num_samples": len(index.samples), "source": str(index.root),
                "mean": mean, "std": std, "stats_images": min(len(source), BETON_SAMPLES),
                "fields": list(BETON_FIELDS), "skipped": len(index.skipped),
                "image_kind": "ndarray" if arrays else "rgb", "channels": channels,
                "size": (size or max_side) if arrays or size else None,
                "store": "ndarray" if arrays else store, "jpeg_quality": None if arrays or store == "raw" else jpeg_quality}
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


_WARP_FLAGS = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # bilinear; the map goes output -> input


class LoaderAugment(Operation):
    """:class:`SampleAugment` inside FFCV's image pipeline, on uint8 images on the CPU (HWC, or CHW for
    N-channel arrays). Draws depend on (seed, epoch, sample index): FFCV hands the operation the batch's
    sample indices. Flips are exact index reversals — for H×W×C images without rotation or perspective, one
    compiled pass over the batch (:func:`~dynconv.data.flip_normalize.flip_images`, parallel as FFCV's own
    operations); rotation + perspective (flips folded in) are one ``cv2.warpPerspective`` per image:
    bilinear, zeros outside, as ``grid_sample`` on the device side. OpenCV releases the GIL, so ``threads``
    threads warp a batch in parallel.

    With ``lut`` (:func:`~dynconv.data.augment.normalization_table`, RGB images) the operation also
    normalises: each augmented uint8 value goes through the table (in the compiled pass, or ``cv2.LUT``
    after a warp) into the float32 output, bit-identical to normalising afterwards. It has to be this
    operation: FFCV's pipeline compiler cannot place its compiled ``NormalizeImage`` after a Python
    operation (its grouping of compiled -> Python -> compiled operations never ends)."""

    def __init__(self, augment: SampleAugment, threads: int, channels_first: bool, lut: np.ndarray | None = None):
        super().__init__()
        if lut is not None and channels_first:
            raise ValueError("lut applies to H×W×C RGB images")
        self.augment, self.threads, self.channels_first = augment, max(1, threads), channels_first
        self.lut = None if lut is None else np.ascontiguousarray(lut, dtype=np.float32).reshape(1, 256, -1)
        self.epoch, self.enabled, self._pool = 0, True, None

    def set_epoch(self, epoch: int, enabled: bool = True) -> None:
        self.epoch, self.enabled = epoch, enabled

    def generate_code(self):
        def loader_augment(images, dst, indices):
            return self(images, dst, indices)

        loader_augment.with_indices = True
        return loader_augment

    def declare_state_and_memory(self, previous_state):
        dtype = previous_state.dtype if self.lut is None else np.dtype(np.float32)
        return replace(previous_state, jit_mode=False, dtype=dtype), AllocationQuery(previous_state.shape, dtype)

    def __call__(self, images: np.ndarray, dst: np.ndarray, indices) -> np.ndarray:
        if not self.enabled and self.lut is None:
            return images
        n = len(images)
        maps, hflip, vflip = None, np.zeros(n, np.bool_), np.zeros(n, np.bool_)
        if self.enabled:
            draw = self.augment.draw(self.epoch, indices)
            maps, hflip, vflip = draw.full_maps(), draw.hflip.numpy(), draw.vflip.numpy()
        if maps is None and not self.channels_first:  # flips only: one compiled pass, as FFCV's own operations
            return flip_images(images, hflip, vflip, dst, None if self.lut is None else self.lut[0])
        flips = list(zip(hflip.tolist(), vflip.tolist()))
        h, w = images.shape[2:4] if self.channels_first else images.shape[1:3]
        pix = None if maps is None else pixel_maps(maps, h, w).numpy()

        def warp(src: np.ndarray, k: int, out: np.ndarray) -> np.ndarray:
            return cv2.warpPerspective(src, pix[k], (w, h), dst=out, flags=_WARP_FLAGS,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)

        def augment_range(lo: int, hi: int) -> None:
            scratch = None if self.lut is None else np.empty(images.shape[1:], images.dtype)
            for k in range(lo, hi):
                if self.channels_first:  # N-channel arrays: one plane at a time
                    if pix is None:
                        hf, vf = flips[k]
                        axes = (1,) * vf + (2,) * hf
                        dst[k] = np.flip(images[k], axes) if axes else images[k]
                    else:
                        for plane, out in zip(images[k], dst[k]):
                            warp(plane, k, out)
                    continue
                out = dst[k] if self.lut is None else scratch  # the warped uint8 image goes here
                warp(images[k], k, out)
                if self.lut is not None:
                    cv2.LUT(out, self.lut, dst=dst[k])

        if self.threads == 1 or n < 2:
            augment_range(0, n)
            return dst
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dynconv-augment")
        bounds = np.linspace(0, n, min(n, self.threads) + 1).astype(int).tolist()
        for f in [self._pool.submit(augment_range, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
            f.result()
        return dst


def ffcv_loader(path: Path, image_size: int, batch_size: int, num_workers: int, shuffle: bool,
                seed: int, drop_last: bool, os_cache: bool = True, quasi_random: bool = False,
                distributed: bool = False, arrays: bool = False, augment: SampleAugment | None = None,
                decoder: str = "center_crop", normalize: tuple[Sequence[float], Sequence[float]] | None = None):
    """An FFCV ``Loader`` yielding ``(uint8 NCHW images, labels)`` on the CPU. RGB images are decoded and
    resized by FFCV; N-channel arrays come back at their stored size (the caller resizes). With
    ``augment`` the images are augmented in the pipeline; the loader's ``augment_op.set_epoch(epoch,
    enabled)`` says which epoch's draws to use. With ``normalize=(mean, std)`` (0-1 scale; RGB images only)
    the pipeline's threads turn them into normalised float32, bit-identical to :class:`BatchTransform`'s —
    FFCV's ``NormalizeImage`` with dynconv's lookup table, or, with ``augment``, :class:`LoaderAugment` —
    as FFCV's own recipe does: for training on the CPU, where those threads then do work the training
    thread would otherwise do."""
    from ffcv.fields.decoders import (CenterCropRGBImageDecoder, IntDecoder, NDArrayDecoder,
                                      RandomResizedCropRGBImageDecoder)
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
    decode = (RandomResizedCropRGBImageDecoder((image_size, image_size)) if decoder == "random_resized_crop" else
              CenterCropRGBImageDecoder((image_size, image_size), ratio=1.0))  # RRC: FFCV's ImageNet recipe's
    image = [NDArrayDecoder(), ToTensor()] if arrays else [decode, ToTensor(), ToTorchImage()]
    table, op = None, None
    if normalize is not None:
        if arrays:
            raise ValueError("normalize applies to RGB images; N-channel arrays are resized after the loader")
        table = normalization_table(*normalize)  # the values BatchTransform computes, bit for bit
        if augment is None:
            from ffcv.transforms import NormalizeImage

            norm = NormalizeImage(*(255 * np.asarray(v, dtype=np.float64) for v in normalize), np.float32)
            norm.lookup_table = table
            image.insert(1, norm)
    if augment is not None:  # with normalize, it normalises too (see LoaderAugment)
        op = LoaderAugment(augment, num_workers, channels_first=arrays, lut=table)
        image.insert(1, op)
    pipelines = {"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(1)]}
    order = OrderOption.SEQUENTIAL
    if shuffle:  # FFCV's quasi-random order does not support distributed=True: use random there
        order = OrderOption.QUASI_RANDOM if quasi_random and not distributed else OrderOption.RANDOM
    loader = Loader(str(path), batch_size=batch_size, num_workers=max(1, num_workers), os_cache=os_cache,
                    order=order, seed=seed, pipelines=pipelines, distributed=distributed,
                    drop_last=drop_last and reader.num_samples >= batch_size)
    loader.augment_op = op
    return loader

