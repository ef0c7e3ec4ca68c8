"""`dynconv train`: config -> data, model, optimiser -> fit -> per-subset evaluation -> MLflow."""
from __future__ import annotations

import random
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dynconv.channel_select import is_channel_adaptive
from dynconv.calibration import calibrate_from_source
from dynconv.channels import all_subsets, parse_subsets, validate_channels
from dynconv.data import AugmentParams, BatchTransform, build_source, default_stats
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.models import create_model
from dynconv.evaluate import subset_accuracies
from dynconv.train import FitSpec, Hook, build_optimizer, build_scheduler, fit, latest_checkpoint, load_checkpoint
from dynconv.train.checkpoint import make_manifest
from dynconv.train.loop import TrainingPreempted
from dynconv.train.distributed import barrier, init_distributed, unwrap
from dynconv.train.runlock import RunLock

from .config import Config, dump_yaml, flatten
from .evaluation import check_classes, evaluate_model, resolve_device
from .report import write_reports
from .tracking import MlflowTracker, default_tracking_uri


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stats(cfg: Config) -> tuple[list[float], list[float]]:
    mean, std = default_stats(cfg.data.channels)
    mean, std = cfg.data.mean or mean, cfg.data.std or std
    if len(mean) != len(cfg.data.channels) or len(std) != len(cfg.data.channels):
        raise DynconvError(f"data.mean and data.std need one value per channel of {cfg.data.channels!r}")
    return list(mean), list(std)


def _resume_checkpoint(cfg: Config, run_dir: Path) -> dict | None:
    resume = cfg.train.resume
    if resume is None:
        if any((run_dir / "checkpoints").glob("epoch_*.pt")) or (run_dir / "model.pt").exists():
            raise DynconvError(f"run.dir {run_dir} already holds a run: pass train.resume=auto to continue it, "
                               "or choose another run.dir")
        return None
    path = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    if ckpt["dynconv"]["model"] != cfg.model.name:
        raise DynconvError(f"cannot resume: {path} holds a {ckpt['dynconv']['model']} model, config asks for "
                           f"{cfg.model.name}")
    if "optimizer" not in ckpt:
        raise DynconvError(f"cannot resume from {path}: it holds final weights only; resume from run.dir/checkpoints")
    return ckpt


def _quiet(_message: str) -> None:
    """Log sink of the non-main data-parallel processes."""


def run_training(cfg: Config, log=print, tags: dict | None = None, hooks: Sequence[Hook] = (),
                 stop_requested: Callable[[], bool] | None = None) -> dict:
    """Train, evaluate every configured subset, log everything; returns a summary dict.

    ``hooks`` get the trainer's events on the main process (after MLflow's); ``stop_requested`` is polled
    before every step: when it turns true, training writes a mid-epoch checkpoint and raises
    :class:`TrainingPreempted` (the MLflow run is marked SCHEDULED; ``train.resume=auto`` continues it)."""
    for key in ("train", "val"):
        if getattr(cfg.data, key) is None:
            raise DynconvError(f"config key 'data.{key}' is required: a .beton file or an image folder")
    channels = validate_channels(cfg.data.channels)
    eval_subsets = parse_subsets(cfg.eval.subsets, channels)  # bad letters fail before any work starts
    dropout = ChannelDropout(cfg.dropout.kind, len(channels), seed=cfg.train.seed, p=cfg.dropout.p,
                             weights=cfg.dropout.weights, curriculum=cfg.dropout.curriculum,
                             ramp_epochs=cfg.dropout.ramp_epochs, steps=cfg.dropout.steps, channels=channels)
    mean, std = _stats(cfg)
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device.type == "cuda")
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    if not dist_info.is_main:
        log = _quiet
    seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights and subsets

    d = cfg.data
    augment = AugmentParams(**d.augment.model_dump(exclude={"enabled", "where"})) if d.augment.enabled else None
    on_loader = d.augment.where == "loader"
    train_src = build_source(d.train, image_size=d.image_size, batch_size=cfg.train.batch_size,
                             num_workers=d.num_workers, train=True, seed=cfg.train.seed, backend=d.backend,
                             strict=d.strict, os_cache=d.os_cache, order=d.order, drop_last=d.drop_last,
                             rank=dist_info.rank, world=dist_info.world, augment=augment if on_loader else None)
    val_src = build_source(d.val, image_size=d.image_size, batch_size=cfg.eval.batch_size,
                           num_workers=d.num_workers, train=False, backend=d.backend, strict=d.strict)
    for src, key in ((train_src, "data.train"), (val_src, "data.val")):
        if src.num_channels != len(channels):
            raise DynconvError(f"{key} has {src.num_channels}-channel images but data.channels={channels!r} names "
                               f"{len(channels)}: set data.channels to {src.num_channels} letters (e.g. 'RGBUV')")
    check_classes(train_src, cfg.model.num_classes, None, f"data.train {d.train}")
    check_classes(val_src, cfg.model.num_classes, train_src.classes, f"data.val {d.val}")

    model_kwargs = {k: v for k, v in cfg.model.model_dump(exclude={"name", "calibration_batches"}).items()
                    if v is not None}
    model_kwargs["in_chans"] = len(channels)
    model = create_model(cfg.model.name, **model_kwargs).to(device)
    if cfg.dropout.kind != "none" and not is_channel_adaptive(model):
        raise DynconvError(f"dropout.kind={cfg.dropout.kind} needs a channel-adaptive model (dynamic_*); "
                           f"use dropout.kind=none with {cfg.model.name}")
    optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.momentum)
    scheduler = build_scheduler(optimizer, cfg.train.scheduler, cfg.train.epochs, cfg.train.warmup_epochs,
                                cfg.train.step_size, cfg.train.gamma)

    run_dir = Path(cfg.run.dir)
    ckpt = _resume_checkpoint(cfg, run_dir)
    barrier()  # every process has checked run.dir before the main one writes to it
    start_epoch, resume = 0, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        resume = {k: ckpt[k] for k in ("step", "partial", "scaler", "bad_steps") if ckpt.get(k) is not None}
        where = f"epoch {start_epoch + 1} step {resume['step']}" if "step" in resume else f"epoch {start_epoch + 1}"
        log(f"resuming at {where}")
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        log(f"data-parallel over {dist_info.world} processes ({'nccl' if device.type == 'cuda' else 'gloo'}), "
            f"{cfg.train.batch_size // dist_info.world} images per process per step")
    with ExitStack() as stack:
        if dist_info.is_main:  # one process per run folder; released on any exit
            stack.enter_context(RunLock(run_dir))
        config_file = None
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            config_file = atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))

        tracker = None
        if cfg.tracking.enabled and dist_info.is_main:
            uri = cfg.tracking.uri or default_tracking_uri(run_dir)
            tracker = MlflowTracker(uri, cfg.tracking.experiment, run_dir, cfg.run.name or run_dir.name,
                                    params=flatten(cfg), tags={"dynconv.model": cfg.model.name, **cfg.run.tags, **(tags or {})},
                                    resume=ckpt is not None)
            log(f"MLflow run {tracker.run_id} ({uri})")

        manifest = make_manifest(cfg.model.name, model_kwargs, channels, d.image_size, mean, std, train_src.classes)
        spec = FitSpec(
            epochs=cfg.train.epochs, device=device,
            train_transform=BatchTransform(mean, std, device, None if on_loader else augment, seed=cfg.train.seed),
            eval_transform=BatchTransform(mean, std, device),
            dropout=dropout,
            run_dir=run_dir, manifest=manifest, label_smoothing=cfg.train.label_smoothing,
            keep_checkpoints=cfg.train.keep_checkpoints, max_bad_steps=cfg.train.max_bad_steps,
            hooks=([tracker] if tracker else []) + list(hooks), log=log, stop_requested=stop_requested,
            epoch_eval=(lambda m: subset_accuracies(m, val_src.epoch(0), spec.eval_transform, eval_subsets, channels,
                                                    device)) if cfg.eval.every_epoch else None, is_main=dist_info.is_main,
            precision=cfg.train.precision, channels_last=cfg.train.channels_last, every_steps=cfg.train.every_steps)

        def recalibrate(m) -> None:
            n = calibrate_from_source(m, train_src, spec.eval_transform, all_subsets(len(channels)),
                                      cfg.model.calibration_batches)
            log(f"re-estimated BatchNorm statistics for {2 ** len(channels) - 1} subsets from {n * dist_info.world} "
                "training images each")

        try:
            final = fit(model, train_src, val_src, optimizer, scheduler, spec, start_epoch=start_epoch,
                        before_final=recalibrate if cfg.model.norm == "recalibrate" else None, resume=resume)
            if not dist_info.is_main:
                return {"run_dir": str(run_dir), "checkpoint": str(final), "report": None, "run_id": None,
                        "tracking_uri": None, "rank": dist_info.rank}
            report = evaluate_model(unwrap(model), manifest, val_src, cfg.eval.subsets, device)
            report["checkpoint"] = str(final)
            files = write_reports(report, run_dir / "eval.json", run_dir / "eval.md")
            if tracker:
                tracker.log_evaluation(report["subsets"], report["summary"], files + [config_file])
                tracker.finish("FINISHED")
        except BaseException as e:
            if tracker:
                tracker.finish("SCHEDULED" if isinstance(e, TrainingPreempted)
                               else "FAILED" if isinstance(e, Exception) else "KILLED")
            raise
        return {"run_dir": str(run_dir), "checkpoint": str(final), "report": report,
                "run_id": tracker.run_id if tracker else None, "tracking_uri": tracker.uri if tracker else None}
