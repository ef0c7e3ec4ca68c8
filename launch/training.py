"""`dynconv train`: config -> data, model, strategy, resume, hooks (calibration, final evaluation, MLflow)
-> fit -> a summary."""
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
from dynconv.channels import all_subsets, num_channels
from dynconv.choices import SUBSET_NORMS
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text, read_json
from dynconv.models import create_model
from dynconv.run_files import CONFIG, EVAL_JSON, MODEL, SOURCE, recorded_mlflow_run
from dynconv.train import FitSpec, Hook, Strategy, build_optimizer, build_scheduler, build_strategy, fit, latest_checkpoint
from dynconv.train.checkpoint import checkpoint_manifest, load_checkpoint, make_manifest, model_from_checkpoint
from dynconv.train.distributed import DistInfo, barrier, init_distributed, same_error_everywhere
from dynconv.train.ema import WeightEMA
from dynconv.train.resize import resolution_at
from dynconv.train.runlock import RunLock
from dynconv.train.strategies import DeepSpeedOptions

from .config import Config, dump_yaml
from .evaluation import FinalEvaluation, resolve_device
from .mixture import manifest_datasets
from .provenance import provenance, recorded_source
from .training_data import TrainingData

log = logging.getLogger("dynconv")


def run_training(cfg: Config, tags: dict | None = None, hooks: Sequence[Hook] = ()) -> dict:
    """Train, evaluate every configured subset, log everything; returns a summary dict.

    ``hooks`` join dynconv's own (calibration, final evaluation, MLflow), called by role (``dynconv.train.hooks``).
    A hook's ``should_stop`` (e.g. Slurm's pre-emption signal) makes training write a mid-epoch checkpoint and
    raise :class:`TrainingPreempted` (the MLflow run is marked SCHEDULED; ``train.resume=auto`` continues it)."""
    data = TrainingData.plan(cfg)  # normalisation statistics, channel dropout, subsets: before any process starts
    device, dist, strategy = _processes(cfg)
    seed_everything(cfg.train.seed)  # same seed on every rank: identical initial weights and subsets
    run_dir = Path(cfg.run.dir)
    with ExitStack() as stack:
        with same_error_everywhere():  # checks some processes make alone: all end with the same one line
            data.open(device, dist)
            model_kwargs, ignored = cfg.model.builder_kwargs(num_channels(data.channels))
            if ignored and dist.is_main:  # e.g. model.name=resnet18 over a config written for dynamic_*
                log.info("note: " + ", ".join(f"model.{k}={v}" for k, v in ignored.items())
                         + f" do(es) not apply to {cfg.model.name} and are ignored")
            model = create_model(cfg.model.name, **model_kwargs).to(device)
            found = _resume_checkpoint(cfg, run_dir)
            if cfg.model.pretrained and found is None:  # a resumed run has its own weights
                _start_pretrained(model, cfg.model.pretrained, data.channels, dist)
            done = _finished(found, run_dir, cfg.train.epochs)
            if done is not None:
                return _already_finished(cfg, done, dist, stack, tags)
            if dist.is_main:  # one process per run folder; released on any exit
                stack.enter_context(RunLock(run_dir))
                atomic_write_text(run_dir / CONFIG, dump_yaml(cfg))
                if found is None or recorded_source(run_dir) is None:  # a resumed run keeps where it began
                    atomic_write_text(run_dir / SOURCE, json.dumps(provenance(), indent=1))
        barrier()  # every process has checked run.dir before the main one writes to it
        macs = subset_macs(model, data, cfg.data.image_size)  # before a strategy wraps, compiles or shards it
        scheduler, ema = _optimisation(cfg, model, strategy, data)
        start_epoch, resume = _resume(found, strategy, scheduler, ema, dist)
        every_epoch = data.score_every_epoch()
        for part, ds in zip(data.parts, data.datasets):
            part.val_subsets = tuple(ds.subsets) if every_epoch else ()
        manifest = make_manifest(cfg.model.name, model_kwargs, data.channels, cfg.data.image_size, *data.stats,
                                 data.train.classes,
                                 datasets=manifest_datasets(cfg.data.mixture, [d.stats for d in data.datasets])
                                 if data.mixture else None)
        own, tracker = _own_hooks(cfg, data, manifest, device, dist, every_epoch, resumed=found is not None, tags=tags)
        train_transform, eval_transform = data.transforms(device)
        t = cfg.train
        spec = FitSpec(
            epochs=t.epochs, device=device, train_transform=train_transform, eval_transform=eval_transform,
            parts=data.parts, dropout=data.dropout, run_dir=run_dir, manifest=manifest,
            label_smoothing=t.label_smoothing, keep_checkpoints=t.keep_checkpoints,
            log_every_steps=t.log_every_steps, table_every=cfg.eval.table_every if every_epoch else 0, max_bad_steps=t.max_bad_steps, hooks=own + list(hooks),
            val_subsets=data.datasets[0].subsets if every_epoch and not data.mixture else (),
            channels=data.channels, channels_last=t.channels_last, every_steps=t.every_steps,
            resolution=_resolution_schedule(cfg), ema=ema, ship_ema=ema is not None and t.ema_final,
            teacher=load_teacher(t.teacher, manifest, device) if t.teacher else None,
            distill_alpha=t.distill_alpha, distill_temperature=t.distill_temperature,
            inplace_distill=t.inplace_distill, inplace_temperature=t.inplace_temperature,
            subset_macs=macs)
        result = fit(strategy, data.train, data.val, scheduler, spec, start_epoch=start_epoch, resume=resume)
        summary = {"run_dir": str(run_dir), "checkpoint": str(result.final_checkpoint), "report": result.report,
                   "run_id": tracker.run_id if tracker else None, "tracking_uri": tracker.uri if tracker else None}
        if not dist.is_main:
            summary["rank"] = dist.rank
        return summary


def _start_pretrained(model: torch.nn.Module, source: str, channels: str, dist: DistInfo) -> None:
    from dynconv.models.pretrained import start_from

    kept = start_from(model, source, channels)
    if dist.is_main:
        log.info(f"started from pretrained weights {source} (first convolution mapped onto {channels} by name"
                 + (f"; {', '.join(kept)} newly initialised: other classes)" if kept else ")"))


def subset_macs(model: torch.nn.Module, data: TrainingData, image_size: int) -> dict:
    """Forward MACs per image of every subset training can draw (a mixture: each dataset's, as the model's)."""
    from dynconv.flops import count_macs

    n = num_channels(data.channels)
    drawn = [p.to_model(s) for p in data.parts for s in all_subsets(len(p.positions))] if data.parts else all_subsets(n)
    return {s: count_macs(model, n, image_size, s) for s in dict.fromkeys(drawn)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _processes(cfg: Config) -> tuple[torch.device, DistInfo, Strategy]:
    """This process's device, its place among the data-parallel processes, and the training strategy."""
    device = resolve_device(cfg.train.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = _strategy_name(cfg, world)
    t = cfg.train
    check_global_batch(t.batch_size, world, t.grad_accum_steps)
    dist = init_distributed(device.type == "cuda", always=name == "deepspeed")
    if device.type == "cuda" and name != "single":
        device = torch.device("cuda", dist.local_rank)
    strategy = build_strategy(name, device, dist, precision=t.precision, grad_accum_steps=t.grad_accum_steps,
                              grad_clip=t.grad_clip, global_batch=t.batch_size, options=_deepspeed_options(cfg, name),
                              passes=cfg.dropout.passes)
    return device, dist, strategy


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


def _optimisation(cfg: Config, model: torch.nn.Module, strategy: Strategy, data: TrainingData):
    """Optimiser and learning-rate schedule, the strategy set up with them, and the weight average if asked."""
    t = cfg.train
    optimizer = build_optimizer(model, t.optimizer, t.lr, t.weight_decay, t.momentum)
    cycle = t.cycle_momentum and t.momentum > 0
    scheduler = build_scheduler(optimizer, t.scheduler, t.epochs, t.warmup_epochs, t.step_size, t.gamma,
                                len(data.train) // t.grad_accum_steps, t.pct_start,
                                momentum=(t.base_momentum, t.momentum) if cycle else None)
    strategy.setup(model, optimizer, channels_last=t.channels_last, compile=t.compile)
    if t.ema_decay and getattr(strategy, "stage", 0) == 3:
        raise DynconvError("train.ema_decay needs the full weights on every process: use deepspeed.zero_stage 0-2")
    ema = WeightEMA(strategy.module, t.ema_decay) if t.ema_decay else None
    if strategy.is_main and data.augment is not None and cfg.data.augment.where == "auto":
        log.info(f"augmenting {'in the data loader' if data.on_loader else 'on the device'} (data.augment.where=auto "
                 f"on {'the CPU' if strategy.device.type == 'cpu' else strategy.device.type})")
    if strategy.is_main and (strategy.name != "single" or t.grad_accum_steps > 1):
        per = check_global_batch(t.batch_size, strategy.dist.world, t.grad_accum_steps)
        passes = f" x {cfg.dropout.passes} passes (dropout.kind=sandwich)" if cfg.dropout.passes > 1 else ""
        log.info(f"{strategy.describe()}, {per} images per process per micro-step, {t.grad_accum_steps} "
                 f"micro-step(s){passes} per optimiser step")
    return scheduler, ema


def _resolution_schedule(cfg: Config) -> Callable[[int], int] | None:
    """Progressive resizing from ``train.res_*`` (checked by the schema): epoch -> training resolution."""
    t = cfg.train
    if t.res_start is None:
        return None
    end = t.res_end or cfg.data.image_size
    ramp = t.res_ramp_epochs if t.res_ramp_epochs is not None else max(1, t.epochs - 1)
    return lambda epoch: resolution_at(epoch, t.res_start, end, ramp)


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


def _resume(found, strategy: Strategy, scheduler, ema: WeightEMA | None, dist: DistInfo) -> tuple[int, dict | None]:
    """(epochs done, the loop's state within the next one) of the checkpoint ``found``, loaded into the strategy."""
    if found is None:
        return 0, None
    state = strategy.load(*found)
    scheduler.load_state_dict(state["scheduler"])
    start_epoch = int(state["epoch"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    resume = {k: state[k] for k in ("step", "partial", "bad_steps", "epoch_metrics", "compute")
              if state.get(k) is not None}
    if dist.is_main:
        where = f"epoch {start_epoch + 1} step {resume['step']}" if "step" in resume else f"epoch {start_epoch + 1}"
        log.info(f"resuming at {where} from {found[0]}")
    return start_epoch, resume


def _finished(found: tuple[Path, dict | None] | None, run_dir: Path, epochs: int) -> dict | None:
    """The summary of a run whose newest checkpoint is its last epoch and whose final files are written."""
    from dynconv.train.checkpoint import read_deepspeed_sidecar

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


def _already_finished(cfg: Config, done: dict, dist: DistInfo, stack: ExitStack, tags: dict | None) -> dict:
    """Nothing to train: the run's summary, and its MLflow run completed if its process ended before that."""
    if not dist.is_main:
        return {**done, "report": None, "rank": dist.rank}
    run_dir = Path(cfg.run.dir)
    log.info(f"run.dir {run_dir} has finished all {cfg.train.epochs} epochs already (model.pt and "
             "eval.json are there): nothing to resume; raise train.epochs to train it further")
    if cfg.tracking.enabled and done["run_id"]:
        from .tracking import complete_finished_run

        stack.enter_context(RunLock(run_dir))  # it may write the buffer and the model folder
        complete_finished_run(run_dir, done, cfg.tracking.log_model, cfg.tracking.register_as)
    return done


def _own_hooks(cfg: Config, data: TrainingData, manifest: dict, device: torch.device, dist: DistInfo,
               every_epoch: bool, resumed: bool, tags: dict | None) -> tuple[list[Hook], Hook | None]:
    """dynconv's hooks of this run — per-subset calibration (every process), the final evaluation and the MLflow
    run (the main process) — and the last of them, the run's MLflow tracker, if any."""
    own: list[Hook] = []
    if cfg.model.norm in SUBSET_NORMS and cfg.calibration.enabled:
        own.append(_calibration(cfg, data, device, dist, every_epoch))
    tracker = None
    if dist.is_main:
        own.append(FinalEvaluation(manifest, data.val, cfg.eval.subsets, device, Path(cfg.run.dir) / CONFIG))
        if cfg.tracking.enabled:
            from .tracking import training_tracker

            tracker = training_tracker(cfg, data, manifest, resumed, tags)
            own.append(tracker)
    return own, tracker


def _calibration(cfg: Config, data: TrainingData, device: torch.device, dist: DistInfo, every_epoch: bool) -> Calibrate:
    """Calibration of every subset the model can see (a mixture: each dataset's, as the model's channels), and
    before each epoch's validation of the ones it scores."""
    c, parts = cfg.calibration, data.parts
    if parts:  # each dataset's subsets (as the model's): its full input and val_subsets every epoch
        full = [p.to_model(s) for p in parts for s in (tuple(range(len(p.positions))), *p.val_subsets)]
        every = list(dict.fromkeys(p.to_model(s) for p in parts for s in all_subsets(len(p.positions))))
    else:
        full = [tuple(range(num_channels(data.channels)))]
        every = all_subsets(num_channels(data.channels))
    per_epoch = list(dict.fromkeys([*full, *(data.datasets[0].subsets if every_epoch and not parts else [])]))
    return Calibrate(data.train, data.transforms(device)[1], every, per_epoch, c.epoch_batches, c.batches,
                     cfg.train.epochs, dist.world, dist.is_main, parts=parts)


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
