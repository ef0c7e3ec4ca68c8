"""`dynconv train`: config -> data, model, optimiser -> fit -> per-subset evaluation -> MLflow."""
from __future__ import annotations

import os
import random
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

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
from dynconv.train.checkpoint import make_manifest, read_deepspeed_sidecar
from dynconv.train.loop import TrainingPreempted
from dynconv.train.distributed import barrier, init_distributed
from dynconv.train.resize import resolution_at
from dynconv.train.runlock import RunLock
from dynconv.train.strategy import DeepSpeedOptions, build_strategy

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


def _resume_checkpoint(cfg: Config, run_dir: Path) -> tuple[Path, dict | None] | None:
    """The checkpoint to continue from (a file, with its loaded contents, or a DeepSpeed folder), if any."""
    resume = cfg.train.resume
    if resume is None:
        if any((run_dir / "checkpoints").glob("epoch_*")) or (run_dir / "model.pt").exists():
            raise DynconvError(f"run.dir {run_dir} already holds a run: pass train.resume=auto to continue it, "
                               "or choose another run.dir")
        return None
    path = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
    if path is None:
        return None
    ckpt = None if path.is_dir() else load_checkpoint(path)
    manifest = read_deepspeed_sidecar(path)["dynconv"] if ckpt is None else ckpt["dynconv"]
    if manifest["model"] != cfg.model.name:
        raise DynconvError(f"cannot resume: {path} holds a {manifest['model']} model, config asks for {cfg.model.name}")
    return path, ckpt


def _strategy_name(cfg: Config, world: int) -> str:
    """``train.strategy``; ``auto`` is ``single`` for one process and ``ddp`` for several."""
    name = cfg.train.strategy
    if name == "auto":
        return "ddp" if world > 1 else "single"
    if name == "single" and world > 1:
        raise DynconvError(f"train.strategy=single but {world} processes were started (WORLD_SIZE): use "
                           "train.strategy=ddp or deepspeed, or start one process")
    return "single" if name == "ddp" and world == 1 else name  # DDP over one process is plain training


def _deepspeed_options(cfg: Config, strategy: str) -> DeepSpeedOptions | None:
    ds = cfg.deepspeed
    if strategy != "deepspeed":
        given = sorted(k for k, v in ds.model_dump().items() if v is not None)  # None: unset (also in a dumped config)
        if given:
            raise DynconvError(f"deepspeed.{given[0]} is set but train.strategy={cfg.train.strategy}: "
                               "set train.strategy=deepspeed, or drop the deepspeed section")
        return None
    return DeepSpeedOptions(ds.zero_stage, ds.offload_optimizer, ds.offload_param, ds.config)


def _resolution_schedule(cfg: Config) -> Callable[[int], int] | None:
    """Progressive resizing from ``train.res_*``: epoch -> training resolution, or None when off."""
    t = cfg.train
    if t.res_start is None:
        if t.res_end is not None or t.res_ramp_epochs is not None:
            raise DynconvError("train.res_end / train.res_ramp_epochs need train.res_start (the first epoch's resolution)")
        return None
    end = t.res_end or cfg.data.image_size
    if max(t.res_start, end) > cfg.data.image_size:
        raise DynconvError(f"train.res_start/res_end ({t.res_start}, {end}) must not exceed data.image_size="
                           f"{cfg.data.image_size}: batches are loaded at data.image_size and resized on the device")
    ramp = t.res_ramp_epochs if t.res_ramp_epochs is not None else max(1, t.epochs - 1)
    return lambda epoch: resolution_at(epoch, t.res_start, end, ramp)


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
    resolution = _resolution_schedule(cfg)
    device = resolve_device(cfg.train.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy_name = _strategy_name(cfg, world)
    ds_options = _deepspeed_options(cfg, strategy_name)
    if cfg.train.batch_size % (world * cfg.train.grad_accum_steps):
        raise DynconvError(f"train.batch_size={cfg.train.batch_size} must be divisible by processes x "
                           f"train.grad_accum_steps = {world} x {cfg.train.grad_accum_steps}")
    dist_info = init_distributed(device.type == "cuda", always=strategy_name == "deepspeed")
    if device.type == "cuda" and strategy_name != "single":
        device = torch.device("cuda", dist_info.local_rank)
    if not dist_info.is_main:
        log = _quiet
    strategy = build_strategy(strategy_name, device, dist_info, precision=cfg.train.precision,
                              grad_accum_steps=cfg.train.grad_accum_steps, grad_clip=cfg.train.grad_clip,
                              global_batch=cfg.train.batch_size, deepspeed=ds_options)
    seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights and subsets

    d = cfg.data
    augment = AugmentParams(**d.augment.model_dump(exclude={"enabled", "where"})) if d.augment.enabled else None
    on_loader = d.augment.where == "loader"
    train_src = build_source(d.train, image_size=d.image_size, batch_size=cfg.train.batch_size // cfg.train.grad_accum_steps,
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
                                cfg.train.step_size, cfg.train.gamma, len(train_src) // cfg.train.grad_accum_steps,
                                cfg.train.pct_start)

    run_dir = Path(cfg.run.dir)
    found = _resume_checkpoint(cfg, run_dir)
    barrier()  # every process has checked run.dir before the main one writes to it
    strategy.setup(model, optimizer, channels_last=cfg.train.channels_last, compile=cfg.train.compile)
    if strategy_name != "single" or cfg.train.grad_accum_steps > 1:
        log(f"{strategy.describe()}, {cfg.train.batch_size // dist_info.world // cfg.train.grad_accum_steps} images "
            f"per process per micro-step, {cfg.train.grad_accum_steps} micro-step(s) per optimiser step")
    start_epoch, resume = 0, None
    if found is not None:
        state = strategy.load(*found)
        scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        resume = {k: state[k] for k in ("step", "partial", "bad_steps") if state.get(k) is not None}
        where = f"epoch {start_epoch + 1} step {resume['step']}" if "step" in resume else f"epoch {start_epoch + 1}"
        log(f"resuming at {where} from {found[0]}")
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
                                    resume=found is not None)
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
                                                    device)) if cfg.eval.every_epoch else None,
            channels_last=cfg.train.channels_last, every_steps=cfg.train.every_steps, resolution=resolution)

        def recalibrate(m) -> None:
            n = calibrate_from_source(m, train_src, spec.eval_transform, all_subsets(len(channels)),
                                      cfg.model.calibration_batches)
            log(f"re-estimated BatchNorm statistics for {2 ** len(channels) - 1} subsets from {n * dist_info.world} "
                "training images each")

        try:
            final = fit(strategy, train_src, val_src, scheduler, spec, start_epoch=start_epoch,
                        before_final=recalibrate if cfg.model.norm == "recalibrate" else None, resume=resume)
            trained = strategy.eval_module()  # every process (ZeRO-3 gathers the weights)
            if not dist_info.is_main:
                return {"run_dir": str(run_dir), "checkpoint": str(final), "report": None, "run_id": None,
                        "tracking_uri": None, "rank": dist_info.rank}
            report = evaluate_model(trained, manifest, val_src, cfg.eval.subsets, device)
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
