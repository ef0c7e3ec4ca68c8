"""`dynconv train`: config -> data, model, optimiser -> fit (with its hooks: calibration, final evaluation,
MLflow) -> a summary."""
from __future__ import annotations

import json
import logging
import os
import random
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from dynconv.batching import check_global_batch
from dynconv.calibration import Calibrate
from dynconv.channels import all_subsets, num_channels, parse_subsets, subsets_within
from dynconv.data import AugmentParams, BatchTransform, DataSource, build_source, default_stats
from dynconv.data.loaders import training_set_stats
from dynconv.data.mixture import MixtureSource
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text, read_json
from dynconv.models import create_model, model_options
from dynconv.run_files import CONFIG, EVAL_JSON, EVAL_MD, EVAL_PNG, MODEL, recorded_mlflow_run
from dynconv.train import FitResult, FitSpec, Hook, build_optimizer, build_scheduler, fit, latest_checkpoint
from dynconv.train.checkpoint import (checkpoint_manifest, load_checkpoint, make_manifest, model_from_checkpoint,
                                      read_deepspeed_sidecar)
from dynconv.train.ema import WeightEMA
from dynconv.train.distributed import barrier, init_distributed, same_error_everywhere
from dynconv.train.resize import resolution_at
from dynconv.train.runlock import RunLock
from dynconv.train.strategies import DeepSpeedOptions, build_strategy

from .config import Config, dump_yaml, flatten
from .evaluation import check_classes, evaluate_model, resolve_device
from .mixture import DATASETS_TAG, check_weights_apply, dataset_part, dropout_weights, manifest_datasets
from .plots import subset_figure
from .report import write_reports

log = logging.getLogger("dynconv")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _stats(cfg: Config) -> tuple[list[float], list[float]]:
    """The one dataset's per-channel (mean, std)."""
    d = cfg.data
    return dataset_stats(d.train, d.channels, d.mean, d.std, d.image_size)


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
    manifest = checkpoint_manifest(path) if ckpt is None else ckpt["dynconv"]
    if manifest["model"] != cfg.model.name:
        raise DynconvError(f"cannot resume: {path} holds a {manifest['model']} model, config asks for {cfg.model.name}")
    return path, ckpt


def _finished(found: tuple[Path, dict | None] | None, run_dir: Path, epochs: int) -> dict | None:
    """The summary of a run whose newest checkpoint is its last epoch and whose final files are written."""
    if found is None or not (run_dir / MODEL).exists() or not (run_dir / EVAL_JSON).exists():
        return None
    path, ckpt = found
    epoch = int(ckpt["epoch"]) if ckpt is not None else int(read_deepspeed_sidecar(path)["epoch"])
    if epoch < epochs or ckpt is not None and ckpt.get("step") is not None:
        return None
    recorded = recorded_mlflow_run(run_dir) or {}
    return {"run_dir": str(run_dir), "checkpoint": str(run_dir / MODEL),
            "report": read_json(run_dir / EVAL_JSON, "report"), "run_id": recorded.get("run_id"),
            "tracking_uri": recorded.get("tracking_uri"), "finished_before": True,
            "epoch_metrics": (ckpt or {}).get("epoch_metrics") or {}}


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
    """The ``deepspeed:`` section as the strategy's options (the schema refuses it for other strategies)."""
    return DeepSpeedOptions(**cfg.deepspeed.model_dump()) if strategy == "deepspeed" else None


def _resolution_schedule(cfg: Config) -> Callable[[int], int] | None:
    """Progressive resizing from ``train.res_*`` (checked by the schema): epoch -> training resolution."""
    t = cfg.train
    if t.res_start is None:
        return None
    end = t.res_end or cfg.data.image_size
    ramp = t.res_ramp_epochs if t.res_ramp_epochs is not None else max(1, t.epochs - 1)
    return lambda epoch: resolution_at(epoch, t.res_start, end, ramp)


def load_teacher(path: str, manifest: dict, device: torch.device) -> torch.nn.Module:
    """The distillation teacher: a trained checkpoint on the same channels, classes and normalisation."""
    ckpt = load_checkpoint(path)
    other = ckpt["dynconv"]
    for key in ("channels", "classes", "mean", "std"):
        if other.get(key) != manifest.get(key):
            raise DynconvError(f"train.teacher {path} was trained with {key}={other.get(key)!r}, this run uses "
                               f"{manifest.get(key)!r}: distil from a model of the same data")
    teacher = model_from_checkpoint(ckpt, path).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class FinalEvaluation(Hook):
    """At the end of training: every configured subset of the validation set (accuracy, precision, recall,
    F1, MACs), written to ``run.dir/eval.{json,md}`` and put into the fit result for the hooks after it."""

    def __init__(self, manifest: dict, source: DataSource, subsets: str, device: torch.device, config_file: Path):
        self.manifest, self.source, self.subsets, self.device = manifest, source, subsets, device
        self.config_file = config_file

    def on_fit_end(self, result: FitResult) -> None:
        report = evaluate_model(result.module, self.manifest, self.source, self.subsets, self.device)
        report["checkpoint"] = str(result.final_checkpoint)
        run_dir = result.final_checkpoint.parent
        result.report = report
        rows = report["subsets"]
        figure = subset_figure([{"label": self.manifest["model"], "macs": {s: r["macs"] for s, r in rows.items()},
                                 "accuracy": {s: r["accuracy"] for s, r in rows.items()}}],
                               run_dir / EVAL_PNG, title=f"{run_dir.name}: accuracy per channel subset")["path"]
        result.files += write_reports(report, run_dir / EVAL_JSON, run_dir / EVAL_MD) + [figure, self.config_file]


def run_training(cfg: Config, tags: dict | None = None, hooks: Sequence[Hook] = ()) -> dict:
    """Train, evaluate every configured subset, log everything; returns a summary dict.

    ``hooks`` get the trainer's events after dynconv's own (calibration, final evaluation, MLflow). A hook's
    ``should_stop`` (e.g. Slurm's pre-emption signal) makes training write a mid-epoch checkpoint and raise
    :class:`TrainingPreempted` (the MLflow run is marked SCHEDULED; ``train.resume=auto`` continues it)."""
    mixture = cfg.data.mixture
    for key in ("train", "val") if not mixture else ():
        if getattr(cfg.data, key) is None:
            raise DynconvError(f"config key 'data.{key}' is required: a .beton file or an image folder")
    channels = cfg.data.channels
    eval_subsets = parse_subsets(cfg.eval.subsets, channels) if not mixture else []
    part_subsets = [parse_subsets(within, e.channels) if (within := subsets_within(cfg.eval.subsets, e.channels)) else []
                    for e in mixture]  # a mixture: each dataset's subsets of eval.subsets, in its own indices

    def channel_dropout(names: str, weights: dict) -> ChannelDropout:
        o = cfg.dropout
        return ChannelDropout(o.kind, num_channels(names), seed=cfg.train.seed, p=o.p, weights=weights,
                              curriculum=o.curriculum, ramp_epochs=o.ramp_epochs, steps=o.steps, channels=names)

    d = cfg.data
    if mixture:
        check_weights_apply(cfg.dropout.weights, [e.channels for e in mixture])
        stats = [dataset_stats(e.path, e.channels, e.mean, e.std, d.image_size) for e in mixture]
        dropouts = [channel_dropout(e.channels, dropout_weights(cfg.dropout.weights, e.channels)) for e in mixture]
        dropout, (mean, std) = dropouts[0], (None, None)
    else:
        dropout = channel_dropout(channels, cfg.dropout.weights)
        mean, std = _stats(cfg)
    device = resolve_device(cfg.train.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy_name = _strategy_name(cfg, world)
    check_global_batch(cfg.train.batch_size, world, cfg.train.grad_accum_steps)
    dist_info = init_distributed(device.type == "cuda", always=strategy_name == "deepspeed")
    if device.type == "cuda" and strategy_name != "single":
        device = torch.device("cuda", dist_info.local_rank)
    run_dir = Path(cfg.run.dir)
    augment = AugmentParams(**d.augment.model_dump(exclude={"enabled", "where"})) if d.augment.enabled else None
    on_loader = d.augment.where == "loader" or (d.augment.where == "auto" and device.type == "cpu")
    # training on the CPU: FFCV's pipeline threads normalise (as FFCV's recipe does) instead of the training
    # thread; on an accelerator the uint8 batch is a quarter of the bytes to copy and the device normalises
    fuse = device.type == "cpu" and (augment is None or on_loader)

    strategy = build_strategy(strategy_name, device, dist_info, precision=cfg.train.precision,
                              grad_accum_steps=cfg.train.grad_accum_steps, grad_clip=cfg.train.grad_clip,
                              global_batch=cfg.train.batch_size, options=_deepspeed_options(cfg, strategy_name))
    seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights and subsets
    with ExitStack() as stack:
        with same_error_everywhere():  # checks some processes make alone: all end with the same one line
            sources = []
            for path, val_path, names, norm, key in (
                    [(e.path, e.val, e.channels, st, f"data.train[{e.label}]") for e, st in zip(mixture, stats)]
                    if mixture else [(d.train, d.val, channels, (mean, std), "data.train")]):
                fused = norm if fuse else None
                t_src = build_source(path, image_size=d.image_size,
                                     batch_size=cfg.train.batch_size // cfg.train.grad_accum_steps,
                                     num_workers=d.num_workers, train=True, seed=cfg.train.seed, backend=d.backend,
                                     strict=d.strict, os_cache=d.os_cache, order=d.order, drop_last=d.drop_last,
                                     rank=dist_info.rank, world=dist_info.world, augment=augment if on_loader else None,
                                     decoder=d.decoder, normalize=fused)
                v_src = build_source(val_path, image_size=d.image_size, batch_size=cfg.eval.batch_size,
                                     num_workers=d.num_workers, train=False, backend=d.backend, strict=d.strict,
                                     normalize=fused)
                val_key, named = (f"{key}.val", f"{key}.channels") if mixture else ("data.val", "data.channels")
                for src, where in ((t_src, key), (v_src, val_key)):
                    if src.num_channels != num_channels(names):
                        raise DynconvError(f"{where} has {src.num_channels}-channel images but {named}={names!r} names "
                                           f"{num_channels(names)}: set {named} to {src.num_channels} names (letters "
                                           "such as RGBUV, or a list such as [DNA, ER, RNA, AGP, Mito])")
                check_classes(t_src, cfg.model.num_classes, None, f"{key} {path}")
                check_classes(v_src, cfg.model.num_classes, t_src.classes, f"{val_key} {val_path}")
                sources.append((t_src, v_src))
            if mixture:
                parts = [dataset_part(e.label, e.channels, channels, m, sd, device, dropout=dr, transform=BatchTransform(
                             m, sd, device, None if on_loader else augment, seed=cfg.train.seed))
                         for e, (m, sd), dr in zip(mixture, stats, dropouts)]
                train_src = MixtureSource([t for t, _ in sources], [p.name for p in parts], seed=cfg.train.seed)
                val_src = MixtureSource([v for _, v in sources], [p.name for p in parts], interleaved=False)
            else:
                parts = []
                [(train_src, val_src)] = sources
            not_kwargs = {"name", "calibrate", "calibration_batches"}
            model_kwargs = {k: v for k, v in cfg.model.model_dump(exclude=not_kwargs).items() if v is not None}
            model_kwargs["in_chans"] = num_channels(channels)
            accepted = model_options(cfg.model.name)
            ignored = {k: v for k, v in model_kwargs.items() if k not in accepted}
            if ignored and dist_info.is_main:  # e.g. model.name=resnet18 over a config written for dynamic_*
                log.info("note: " + ", ".join(f"model.{k}={v}" for k, v in ignored.items())
                         + f" do(es) not apply to {cfg.model.name} and are ignored")
            model_kwargs = {k: v for k, v in model_kwargs.items() if k in accepted}
            model = create_model(cfg.model.name, **model_kwargs).to(device)
            found = _resume_checkpoint(cfg, run_dir)
            done = _finished(found, run_dir, cfg.train.epochs)
            if done is not None:
                if not dist_info.is_main:
                    return {**done, "report": None, "rank": dist_info.rank}
                log.info(f"run.dir {run_dir} has finished all {cfg.train.epochs} epochs already (model.pt and "
                         "eval.json are there): nothing to resume; raise train.epochs to train it further")
                if cfg.tracking.enabled and done["run_id"]:
                    from .tracking import complete_finished_run

                    stack.enter_context(RunLock(run_dir))  # it may write the buffer and the model folder
                    files = [run_dir / f for f in (EVAL_JSON, EVAL_MD, EVAL_PNG, CONFIG) if (run_dir / f).exists()]
                    complete_finished_run(run_dir, done["tracking_uri"], done["run_id"], done["report"], files,
                                          checkpoint_manifest(run_dir / MODEL) if cfg.tracking.log_model else None)
                return done
            config_file = run_dir / CONFIG
            if dist_info.is_main:  # one process per run folder; released on any exit
                stack.enter_context(RunLock(run_dir))
                atomic_write_text(config_file, dump_yaml(cfg))
        barrier()  # every process has checked run.dir before the main one writes to it
        optimizer = build_optimizer(model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay,
                                    cfg.train.momentum)
        t = cfg.train
        cycle = t.cycle_momentum and t.momentum > 0
        scheduler = build_scheduler(optimizer, t.scheduler, t.epochs, t.warmup_epochs, t.step_size, t.gamma,
                                    len(train_src) // t.grad_accum_steps, t.pct_start,
                                    momentum=(t.base_momentum, t.momentum) if cycle else None)
        strategy.setup(model, optimizer, channels_last=cfg.train.channels_last, compile=cfg.train.compile)
        if t.ema_decay and getattr(strategy, "stage", 0) == 3:
            raise DynconvError("train.ema_decay needs the full weights on every process: use deepspeed.zero_stage 0-2")
        ema = WeightEMA(strategy.module, t.ema_decay) if t.ema_decay else None
        if dist_info.is_main and augment is not None and d.augment.where == "auto":
            log.info(f"augmenting {'in the data loader' if on_loader else 'on the device'} (data.augment.where=auto on "
                     f"{'the CPU' if device.type == 'cpu' else device.type})")
        if dist_info.is_main and (strategy_name != "single" or cfg.train.grad_accum_steps > 1):
            per = check_global_batch(cfg.train.batch_size, dist_info.world, cfg.train.grad_accum_steps)
            log.info(f"{strategy.describe()}, {per} images per process per micro-step, {cfg.train.grad_accum_steps} "
                     "micro-step(s) per optimiser step")
        start_epoch, resume = 0, None
        if found is not None:
            state = strategy.load(*found)
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = int(state["epoch"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            resume = {k: state[k] for k in ("step", "partial", "bad_steps", "epoch_metrics") if state.get(k) is not None}
            where = f"epoch {start_epoch + 1} step {resume['step']}" if "step" in resume else f"epoch {start_epoch + 1}"
            if dist_info.is_main:
                log.info(f"resuming at {where} from {found[0]}")

        # per-subset accuracy every epoch when it is cheap: scoring the subsets costs at most one epoch's images
        scored = [(src.num_samples, subs) for (_, src), subs in zip(sources, part_subsets)] if mixture else \
            [(val_src.num_samples, eval_subsets)]
        every_epoch = cfg.eval.every_epoch if isinstance(cfg.eval.every_epoch, bool) else \
            sum(n * len(subs) for n, subs in scored) <= train_src.num_samples
        for part, subs in zip(parts, part_subsets):
            part.val_subsets = tuple(subs) if every_epoch else ()
        manifest = make_manifest(cfg.model.name, model_kwargs, channels, d.image_size, mean, std, train_src.classes,
                                 datasets=manifest_datasets(mixture, stats) if mixture else None)
        train_transform = parts[0].transform if mixture else \
            BatchTransform(mean, std, device, None if on_loader else augment, seed=cfg.train.seed)
        eval_transform = parts[0].eval_transform if mixture else BatchTransform(mean, std, device)
        own: list[Hook] = []
        if cfg.model.norm in ("recalibrate", "switchable") and cfg.model.calibrate:
            if mixture:  # each dataset's subsets (as the model's): its full input and val_subsets every epoch
                full = [p.to_model(s) for p in parts for s in (tuple(range(len(p.positions))), *p.val_subsets)]
                every = list(dict.fromkeys(p.to_model(s) for p in parts for s in all_subsets(len(p.positions))))
            else:
                full = [tuple(range(num_channels(channels)))]
                every = all_subsets(num_channels(channels))
            per_epoch = list(dict.fromkeys([*full, *(eval_subsets if every_epoch else [])]))
            own.append(Calibrate(train_src, eval_transform, every, per_epoch, cfg.eval.calibration_batches,
                                 cfg.model.calibration_batches, cfg.train.epochs, dist_info.world, dist_info.is_main,
                                 parts=parts))
        tracker = None
        if dist_info.is_main:
            own.append(FinalEvaluation(manifest, val_src, cfg.eval.subsets, device, config_file))
            if cfg.tracking.enabled:
                from .tracking import MlflowTracking, default_tracking_uri

                params = {k: v for k, v in flatten(cfg).items() if v not in (None, {})}  # the set ones
                params["run.name"] = cfg.run.name or run_dir.name
                inputs = [(path, role, names, src.classes, src.num_samples, label)
                          for (t_src, v_src), (path, val_path, names, label) in zip(sources, (
                              [(e.path, e.val, e.channels, e.label) for e in mixture] or [(d.train, d.val, channels, None)]))
                          for path, role, src in ((path, "training", t_src), (val_path, "validation", v_src))]
                if mixture:
                    tags = {**(tags or {}), DATASETS_TAG: json.dumps([{"name": p.name, "channels": p.channels}
                                                                      for p in parts])}
                tracker = MlflowTracking(cfg.tracking.uri or default_tracking_uri(run_dir), cfg.tracking.experiment,
                                         run_dir, cfg.run.name or run_dir.name, params=params,
                                         tags={"dynconv.model": cfg.model.name, **cfg.run.tags, **(tags or {})},
                                         resume=found is not None, inputs=inputs, manifest=manifest,
                                         log_model=cfg.tracking.log_model, wait_s=cfg.tracking.wait_s)
                own.append(tracker)
        spec = FitSpec(
            epochs=cfg.train.epochs, device=device,
            train_transform=train_transform, eval_transform=eval_transform, parts=parts, dropout=dropout, run_dir=run_dir, manifest=manifest,
            label_smoothing=cfg.train.label_smoothing, keep_checkpoints=cfg.train.keep_checkpoints,
            log_every_steps=cfg.train.log_every_steps,
            max_bad_steps=cfg.train.max_bad_steps, hooks=own + list(hooks),
            val_subsets=eval_subsets if every_epoch else (), channels=channels,
            channels_last=cfg.train.channels_last, every_steps=cfg.train.every_steps,
            resolution=_resolution_schedule(cfg), ema=ema, ship_ema=ema is not None and t.ema_final,
            teacher=load_teacher(t.teacher, manifest, device) if t.teacher else None,
            distill_alpha=t.distill_alpha, distill_temperature=t.distill_temperature)
        result = fit(strategy, train_src, val_src, scheduler, spec, start_epoch=start_epoch, resume=resume)
        summary = {"run_dir": str(run_dir), "checkpoint": str(result.final_checkpoint), "report": result.report,
                   "run_id": tracker.run_id if tracker else None, "tracking_uri": tracker.uri if tracker else None}
        if not dist_info.is_main:
            summary["rank"] = dist_info.rank
        return summary
