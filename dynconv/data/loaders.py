"""One entry point for input data: an ImageFolder directory or an FFCV ``.beton`` file.

Both paths yield ``(images, labels)`` batches of uint8 NCHW images at ``image_size`` and int64 labels on
the CPU; normalisation runs afterwards on the training device (or, for RGB ``.beton`` files with
``normalize=``, inside FFCV's pipeline), augmentation either there too or, with ``augment=``, inside the
loader (``data.augment.where``, see ``augment.py``).
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler

from ..batching import check_global_batch
from ..choices import DATA_BACKENDS, DECODERS, check_choice
from ..errors import DynconvError
from ..extras import require
from .augment import AugmentParams, SampleAugment
from .folder import ImageFolderDataset, missing_data_message, num_channels, scan_image_folder, square_resize
from .stats import FOLDER_SAMPLES, folder_stats

LOADER_TIMEOUT_S = 600  # a worker that produces nothing for this long is an error, never a silent hang


def _stop_workers(it) -> None:
    """Shut a torch DataLoader iterator's workers down with torch's SIGCHLD handler set aside, so that it
    cannot raise again, at a random point of the caller, for the worker that already died (a signal that
    already arrived runs whatever handler is current when Python gets to it)."""
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is None:
        return
    try:
        previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: cannot swap handlers
        previous = None
    try:
        shutdown()
    finally:
        if previous is not None:
            signal.signal(signal.SIGCHLD, previous)


class DataSource:
    """Batches of ``(uint8 NCHW images, int64 labels)`` on the CPU plus what callers need to know about them
    (``normalized``: the images come as normalised float32 instead, from an FFCV pipeline built with
    ``build_source(normalize=...)``; :class:`~dynconv.data.augment.BatchTransform` takes either). The base
    serves any iterable of batches (in memory, in tests); :class:`FolderSource` and :class:`FfcvSource` are
    the two loaders."""

    backend = "memory"
    normalized = False

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: list[str] | None,
                 num_samples: int, backend: str | None = None, num_channels: int = 3, skipped: int = 0):
        self.batches, self.classes, self.num_samples = batches, classes, num_samples
        self.backend = backend or self.backend
        self.num_channels, self.skipped = num_channels, skipped

    def epoch(self, epoch: int, augment: bool = True, copy: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate one epoch; shuffling depends only on (seed, epoch), loader-side augmentation (if the
        source has it and ``augment``) only on (seed, epoch, sample index). Batches stay valid after the
        next one is drawn (callers may keep them); with ``copy=False`` a batch may be valid only until the
        next one is drawn (FFCV refills its buffers), which spares a copy per batch to a loop that is done
        with each batch before it draws the next."""
        self._start_epoch(epoch, augment)
        for x, y in self._iterate(copy):
            yield x, y.view(-1).to(torch.long)

    def _start_epoch(self, epoch: int, augment: bool) -> None:
        """Seed this epoch's order and augmentation."""

    def _iterate(self, copy: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


class FolderSource(DataSource):
    """An ImageFolder through a torch ``DataLoader`` (PIL decoding in worker processes). A worker that dies
    (killed, out of memory) is a one-line error, never a hang."""

    backend = "torchvision"

    def __init__(self, loader: DataLoader, classes: list[str], num_samples: int, num_channels: int, skipped: int,
                 generator: torch.Generator | None = None, seed: int = 0,
                 set_augment_epoch: Callable[[int, bool], None] | None = None):
        super().__init__(loader, classes, num_samples, num_channels=num_channels, skipped=skipped)
        self.generator, self.seed, self.set_augment_epoch = generator, seed, set_augment_epoch

    def _start_epoch(self, epoch: int, augment: bool) -> None:
        if self.generator is not None:
            self.generator.manual_seed(self.seed + epoch)
        if self.set_augment_epoch is not None:
            self.set_augment_epoch(epoch, augment)

    def _iterate(self, copy: bool = True):  # the DataLoader hands out fresh tensors
        it = iter(self.batches)
        try:
            yield from it
        except (RuntimeError, EOFError, ConnectionError) as e:
            # torch reports a dead worker (killed, out of memory) as RuntimeError; one that dies while handing
            # a batch over breaks the connection that shares the batch's memory (EOFError, ConnectionError)
            workers = hasattr(it, "_shutdown_workers")
            if not workers or (isinstance(e, RuntimeError) and "worker" not in str(e).lower()):
                raise
            _stop_workers(it)
            what = str(e).splitlines()[0][:120] if str(e) else f"{e.__class__.__name__} while receiving a batch"
            raise DynconvError(f"a data-loader worker died ({what}): check memory "
                               "(lower data.num_workers or train.batch_size) and the data files") from None


class FfcvSource(DataSource):
    """An FFCV ``.beton`` through FFCV's ``Loader``. FFCV hands out views of buffers it refills a few batches
    later, so batches are copied; N-channel arrays come back at their stored size and are resized here."""

    backend = "ffcv"

    def __init__(self, loader, classes: list[str] | None, num_samples: int, num_channels: int, skipped: int,
                 resize_to: int | None = None, set_augment_epoch: Callable[[int, bool], None] | None = None,
                 normalized: bool = False):
        super().__init__(loader, classes, num_samples, num_channels=num_channels, skipped=skipped)
        self.resize_to, self.set_augment_epoch, self.normalized = resize_to, set_augment_epoch, normalized

    def _start_epoch(self, epoch: int, augment: bool) -> None:
        if self.set_augment_epoch is not None:
            self.set_augment_epoch(epoch, augment)
        self.batches.next_epoch = epoch  # its random order is seeded by (seed, epoch)

    def _iterate(self, copy: bool = True):
        it = iter(self.batches)
        try:
            for x, y in it:
                if self.resize_to and x.shape[-1] != self.resize_to:
                    x = square_resize(x, self.resize_to)
                elif copy:
                    x = x.clone()
                yield x, y.clone()
        finally:
            # an epoch left before its end (calibration's few batches, an interrupted run): FFCV's epoch thread
            # would wait forever to hand over its next batch, keeping its buffers. Told to stop, it ends at its
            # next attempt (within half a second); FFCV frees the epoch's memory when the iterator is collected.
            stop = getattr(it, "terminate_event", None)
            if stop is not None:
                stop.set()


class ShardedBatchSampler(Sampler):
    """Data-parallel batches: the same global batches a single process would draw (one permutation from
    the seeded generator), each rank taking its contiguous share — so N ranks with batch B/N together see
    exactly the batches one process with batch B sees."""

    def __init__(self, n: int, global_batch: int, rank: int, world: int, generator: torch.Generator,
                 drop_last: bool):
        check_global_batch(global_batch, world, 1)
        self.n, self.batch, self.rank, self.world, self.gen = n, global_batch, rank, world, generator
        self.drop_last = drop_last and n >= global_batch

    def __len__(self) -> int:
        return self.n // self.batch if self.drop_last else -(-self.n // self.batch)

    def __iter__(self):
        perm = torch.randperm(self.n, generator=self.gen).tolist()
        share = self.batch // self.world
        for k in range(len(self)):
            batch = perm[k * self.batch:(k + 1) * self.batch]
            mine = batch[self.rank * share:(self.rank + 1) * share]
            if mine:
                yield mine


class EpochTagged(Sampler):
    """Wraps a sampler (or batch sampler) to yield ``(index, epoch)`` keys instead of indices — ``epoch`` is
    ``None`` when augmentation is off — so that per-sample augmentation in the worker processes can draw
    from (seed, epoch, sample index). Samplers run in the main process; ``set_epoch`` takes effect at the
    next iteration."""

    def __init__(self, inner: Sampler):
        self.inner, self.epoch = inner, None

    def set_epoch(self, epoch: int, augment: bool = True) -> None:
        self.epoch = epoch if augment else None

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        e = self.epoch
        for item in self.inner:
            yield [(i, e) for i in item] if isinstance(item, list) else (item, e)


def check_beton_exists(path: Path) -> None:
    if not path.is_file():
        raise DynconvError(missing_data_message(path, "data file"))


def training_set_stats(path: str | Path, image_size: int) -> tuple[list[float], list[float], str]:
    """``data.mean/std=auto``: (mean, std, where they come from) of a ``.beton`` (recorded by ``dynconv
    convert`` in its sidecar) or of an image folder (measured now, at ``image_size``)."""
    path = Path(path)
    if path.suffix != ".beton":
        return (*folder_stats(path, image_size), f"of up to {FOLDER_SAMPLES} training images")
    check_beton_exists(path)
    meta = require("ffcv", "dynconv.data.ffcv_io").read_beton_meta(path)
    if "mean" not in meta:
        raise DynconvError(f"{path} records no channel statistics for data.mean/std=auto (converted by an older "
                           "dynconv, or its .json sidecar is missing): run 'dynconv convert' again, or set "
                           "data.mean and data.std")
    return meta["mean"], meta["std"], f"recorded by 'dynconv convert' from {meta.get('stats_images')} images"


def build_source(path: str | Path, *, image_size: int, batch_size: int, num_workers: int = 2,
                 train: bool = False, seed: int = 0, backend: str = "auto", strict: bool = False,
                 os_cache: bool = True, order: str = "random", drop_last: bool = True,
                 rank: int = 0, world: int = 1, augment: AugmentParams | None = None,
                 decoder: str = "center_crop", normalize: tuple[Sequence[float], Sequence[float]] | None = None
                 ) -> DataSource:
    """Open ``path`` (folder or ``.beton``). ``backend='auto'`` uses FFCV for ``.beton`` files.

    Training sources shuffle (``order``: ``random``, or FFCV's ``quasi_random`` for datasets larger than
    memory) and drop the last partial batch when ``drop_last``; evaluation sources are sequential.
    With ``world > 1`` a training source yields this rank's share of each global batch of ``batch_size``.
    ``augment`` (training sources only) augments the uint8 images inside the loader, on the CPU.
    ``normalize=(mean, std)`` normalises RGB ``.beton`` images inside FFCV's pipeline (float32 batches,
    ``source.normalized``), which pays off when training on the CPU; other sources ignore it."""
    distributed = train and world > 1
    sample_aug = SampleAugment(augment, seed) if train and augment is not None and not augment.is_identity else None
    path = Path(path)
    check_choice(backend, DATA_BACKENDS, "data backend")
    is_beton = path.suffix == ".beton"
    if is_beton:
        check_beton_exists(path)
        if backend == "torchvision":
            raise DynconvError(f"{path} is an FFCV file: use data.backend=ffcv (or auto), or point at the image folder")
        ffcv_io = require("ffcv", "dynconv.data.ffcv_io")

        meta = ffcv_io.read_beton_meta(path)
        arrays = meta.get("image_kind") == "ndarray"
        per_rank = batch_size // world if distributed else batch_size
        loader = ffcv_io.ffcv_loader(path, image_size, per_rank, num_workers, shuffle=train, seed=seed,
                                     drop_last=train and drop_last, os_cache=os_cache,
                                     quasi_random=order == "quasi_random", distributed=distributed, arrays=arrays,
                                     augment=sample_aug, decoder=decoder if train else "center_crop",
                                     normalize=None if arrays else normalize)
        return FfcvSource(loader, meta.get("classes"), int(loader.reader.num_samples), int(meta.get("channels", 3)),
                          meta.get("skipped", 0), image_size if arrays else None,
                          loader.augment_op.set_epoch if sample_aug else None, normalized=normalize is not None and not arrays)
    if train and check_choice(decoder, DECODERS, "decoder") != "center_crop":
        raise DynconvError(f"data.decoder={decoder} is FFCV's: convert {path} to a .beton, or use "
                           "data.decoder=center_crop")
    if backend == "ffcv":
        raise DynconvError(f"{path} is not a .beton file: convert it with 'dynconv convert {path} OUT.beton' or use data.backend=auto")
    index = scan_image_folder(path, strict=strict)
    dataset = ImageFolderDataset(index, image_size, sample_aug)
    gen = torch.Generator().manual_seed(seed) if train else None
    tag = EpochTagged if sample_aug else (lambda s: s)
    if distributed:
        sampler = tag(ShardedBatchSampler(len(dataset), batch_size, rank, world, gen, drop_last))
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                            persistent_workers=num_workers > 0, timeout=LOADER_TIMEOUT_S if num_workers else 0)
    else:
        sampler = tag(RandomSampler(dataset, generator=gen) if train else SequentialSampler(dataset))
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            drop_last=train and drop_last and len(dataset) >= batch_size,
                            persistent_workers=num_workers > 0, timeout=LOADER_TIMEOUT_S if num_workers else 0)
    return FolderSource(loader, index.classes, len(dataset), num_channels(index), len(index.skipped), gen, seed,
                        sampler.set_epoch if sample_aug else None)
