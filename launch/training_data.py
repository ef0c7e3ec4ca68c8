"""A training's data, from the config: each dataset's normalisation, channel dropout and evaluation subsets
(:meth:`TrainingData.plan`), then its loaders, transforms and, for a mixture, its parts (:meth:`TrainingData.open`)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dynconv.channels import Subset, num_channels, parse_subsets, subsets_within
from dynconv.data import AugmentParams, BatchTransform, DataSource, build_source, default_stats
from dynconv.data.folder import missing_data_message
from dynconv.data.loaders import training_set_stats
from dynconv.data.mixture import MixturePart, MixtureSource
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError
from dynconv.train.distributed import DistInfo

from .config import Config
from .evaluation import check_classes
from .mixture import check_weights_apply, dataset_part, dropout_weights

log = logging.getLogger("dynconv")


def dataset_stats(path, channels: str, mean, std, image_size: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of a dataset: as configured, its training set's with ``auto``, else the defaults."""
    measured = _training_set_stats(path, channels, image_size) if "auto" in (mean, std) else (None, None)
    return tuple([float(v) for v in (auto if given == "auto" else default if given is None else given)]
                 for given, default, auto in zip((mean, std), default_stats(channels), measured))


def _training_set_stats(path, channels: str, image_size: int) -> tuple[list[float], list[float]]:
    mean, std, source = training_set_stats(path, image_size)
    if len(mean) != num_channels(channels):
        raise DynconvError(f"{path} has {len(mean)} channels but {channels!r} names {num_channels(channels)}: set "
                           "data.channels (a mixture: the dataset's channels) to match")
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(f"data.mean/std=auto: mean {mean}, std {std} ({source}) for {path}")
    return mean, std


@dataclass
class Dataset:
    """One dataset of the training: ``data.train``/``data.val``, or an entry of a mixture."""

    path: str
    val: str
    channels: str
    label: str | None            # its name in a mixture; None for the one dataset
    key: str                     # its config key, for messages (data.train, data.train[NAME])
    stats: tuple[list[float], list[float]]
    dropout: ChannelDropout
    subsets: list[Subset]        # eval.subsets within its channels (in its own indices)
    train: DataSource | None = None
    val_source: DataSource | None = None


@dataclass
class TrainingData:
    cfg: Config
    datasets: list[Dataset]
    mixture: bool
    augment: AugmentParams | None = None
    on_loader: bool = False      # augment inside the loader (else on the device)
    parts: list[MixturePart] = field(default_factory=list)  # a mixture's datasets as the model sees them
    train: DataSource | None = None
    val: DataSource | None = None

    @classmethod
    def plan(cls, cfg: Config) -> "TrainingData":
        """What needs no loader: normalisation (``auto``: the training sets' statistics), dropout, subsets."""
        d, mixture = cfg.data, cfg.data.mixture
        for key in ("train", "val") if not mixture else ():
            if getattr(d, key) is None:
                raise DynconvError(f"config key 'data.{key}' is required: a .beton file or an image folder")
        if mixture:
            check_weights_apply(cfg.dropout.weights, [e.channels for e in mixture])
            entries = [(e.path, e.val, e.channels, e.mean, e.std, e.label, f"data.train[{e.label}]",
                        dropout_weights(cfg.dropout.weights, e.channels)) for e in mixture]
        else:
            entries = [(d.train, d.val, d.channels, d.mean, d.std, None, "data.train", cfg.dropout.weights)]
        datasets = []
        for path, val, channels, mean, std, label, key, weights in entries:
            within = subsets_within(cfg.eval.subsets, channels) if mixture else cfg.eval.subsets
            datasets.append(Dataset(path, val, channels, label, key, dataset_stats(path, channels, mean, std, d.image_size),
                                    _dropout(cfg, channels, weights), parse_subsets(within, channels) if within else []))
        return cls(cfg, datasets, bool(mixture))

    @property
    def channels(self) -> str:
        """The model's channels (a mixture: the union of its datasets')."""
        return self.cfg.data.channels

    @property
    def dropout(self) -> ChannelDropout:
        return self.datasets[0].dropout

    @property
    def stats(self) -> tuple[list[float] | None, list[float] | None]:
        """The one dataset's normalisation; (None, None) for a mixture (each dataset has its own)."""
        return (None, None) if self.mixture else self.datasets[0].stats

    def open(self, device: torch.device, dist: DistInfo) -> None:
        """The loaders of every dataset (each checked against its channels and the model's classes) and, for
        a mixture, the interleaved training source and one part per dataset."""
        cfg, d = self.cfg, self.cfg.data
        self.augment = AugmentParams(**d.augment.model_dump(exclude={"enabled", "where"})) if d.augment.enabled else None
        self.on_loader = d.augment.where == "loader" or (d.augment.where == "auto" and device.type == "cpu")
        # training on the CPU: FFCV's pipeline threads normalise (as FFCV's recipe does) instead of the training
        # thread; on an accelerator the uint8 batch is a quarter of the bytes to copy and the device normalises
        fuse = device.type == "cpu" and (self.augment is None or self.on_loader)
        for ds in self.datasets:  # a path that is not there: one line naming its key, before any loader starts
            for path, key in ((ds.path, ds.key), (ds.val, f"{ds.key}.val" if self.mixture else "data.val")):
                if not Path(path).exists():
                    raise DynconvError(missing_data_message(path, key))
        for ds in self.datasets:
            fused = ds.stats if fuse else None
            ds.train = build_source(ds.path, image_size=d.image_size,
                                    batch_size=cfg.train.batch_size // cfg.train.grad_accum_steps,
                                    num_workers=d.num_workers, train=True, seed=cfg.train.seed, backend=d.backend,
                                    strict=d.strict, os_cache=d.os_cache, order=d.order, drop_last=d.drop_last,
                                    rank=dist.rank, world=dist.world, augment=self.augment if self.on_loader else None,
                                    decoder=d.decoder, normalize=fused)
            ds.val_source = build_source(ds.val, image_size=d.image_size, batch_size=cfg.eval.batch_size,
                                         num_workers=d.num_workers, train=False, backend=d.backend, strict=d.strict,
                                         normalize=fused)
            val_key, named = (f"{ds.key}.val", f"{ds.key}.channels") if self.mixture else ("data.val", "data.channels")
            for src, where in ((ds.train, ds.key), (ds.val_source, val_key)):
                if src.num_channels != num_channels(ds.channels):
                    raise DynconvError(f"{where} has {src.num_channels}-channel images but {named}={ds.channels!r} "
                                       f"names {num_channels(ds.channels)}: set {named} to {src.num_channels} names "
                                       "(letters such as RGBUV, or a list such as [DNA, ER, RNA, AGP, Mito])")
            check_classes(ds.train, cfg.model.num_classes, None, f"{ds.key} {ds.path}")
            check_classes(ds.val_source, cfg.model.num_classes, ds.train.classes, f"{val_key} {ds.val}")
        if self.mixture:
            self.parts = [dataset_part(ds.label, ds.channels, self.channels, *ds.stats, device, dropout=ds.dropout,
                                       transform=self.batch_transform(ds.stats, device, train=True))
                          for ds in self.datasets]
            self.train = MixtureSource([ds.train for ds in self.datasets], [p.name for p in self.parts],
                                       seed=cfg.train.seed)
            self.val = MixtureSource([ds.val_source for ds in self.datasets], [p.name for p in self.parts],
                                     interleaved=False)
        else:
            self.train, self.val = self.datasets[0].train, self.datasets[0].val_source

    def batch_transform(self, stats, device: torch.device, train: bool = False) -> BatchTransform:
        """Source batch -> normalised float batch on ``device`` (training: augmented there unless the loader does)."""
        augment = self.augment if train and not self.on_loader else None
        return BatchTransform(*stats, device, augment, seed=self.cfg.train.seed) if train else \
            BatchTransform(*stats, device)

    def transforms(self, device: torch.device) -> tuple:
        """(training transform, evaluation transform) of the one dataset (a mixture: its first part's; each part
        carries its own)."""
        if self.mixture:
            return self.parts[0].transform, self.parts[0].eval_transform
        stats = self.datasets[0].stats
        return self.batch_transform(stats, device, train=True), self.batch_transform(stats, device)

    def score_every_epoch(self) -> bool:
        """``eval.every_epoch``; ``auto``: when scoring the subsets costs at most one epoch's images."""
        every = self.cfg.eval.every_epoch
        if isinstance(every, bool):
            return every
        return sum(ds.val_source.num_samples * len(ds.subsets) for ds in self.datasets) <= self.train.num_samples

    def inputs(self) -> list[tuple]:
        """The MLflow dataset inputs: (path, role, channels, classes, samples, dataset name) of every set."""
        return [(path, role, ds.channels, src.classes, src.num_samples, ds.label) for ds in self.datasets
                for path, role, src in ((ds.path, "training", ds.train), (ds.val, "validation", ds.val_source))]


def _dropout(cfg: Config, names: str, weights: dict) -> ChannelDropout:
    o = cfg.dropout
    return ChannelDropout(o.kind, num_channels(names), seed=cfg.train.seed, p=o.p, weights=weights,
                          curriculum=o.curriculum, ramp_epochs=o.ramp_epochs, steps=o.steps, channels=names,
                          n_subsets=o.n_subsets, full_weight=o.full_weight)
