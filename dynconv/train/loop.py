"""The training loop: channel dropout per batch, per-epoch validation, atomic checkpoints, hooks."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..channel_select import forward_subset
from ..data.loaders import DataSource
from ..dropout import ChannelDropout
from ..errors import DynconvError
from .checkpoint import atomic_torch_save, epoch_checkpoint, prune_checkpoints
from .distributed import all_reduce_sum, barrier, unwrap
from .hooks import Hook


class TrainingDiverged(DynconvError):
    """The loss became NaN/Inf more often than ``max_bad_steps`` allows."""


class TrainingPreempted(Exception):
    """``FitSpec.stop_requested`` turned true (e.g. Slurm's pre-emption signal): training stopped at a step
    boundary after writing a mid-epoch checkpoint, so ``train.resume=auto`` continues exactly there."""

    def __init__(self, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(f"stopped on request at epoch {epoch} step {step}; checkpoint {checkpoint}")
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


@dataclass
class FitSpec:
    """Everything ``fit`` needs besides the model, data and optimiser."""

    epochs: int
    device: torch.device
    train_transform: Callable   # (uint8 batch, epoch, step) -> float batch on device
    eval_transform: Callable    # uint8 batch -> float batch on device
    dropout: ChannelDropout
    run_dir: Path
    manifest: dict              # written into every checkpoint (model name/kwargs, channels, ...)
    label_smoothing: float = 0.0
    keep_checkpoints: int = 2
    max_bad_steps: int = 0      # non-finite losses tolerated (their updates skipped) before training stops
    is_main: bool = True        # data-parallel: only the main process validates, checkpoints and calls hooks
    precision: str = "fp32"     # fp32 | bf16 | fp16 (autocast; fp16 adds a gradient scaler)
    every_steps: int = 0        # also checkpoint every this many steps within an epoch (0: epoch ends only)
    channels_last: bool = False
    hooks: Sequence[Hook] = field(default_factory=tuple)
    log: Callable[[str], None] = print
    # extra per-epoch validation metrics, e.g. per-subset accuracy ({"acc_RG": ..., "worst_subset_acc": ...})
    epoch_eval: Callable[[nn.Module], dict[str, float]] | None = None
    # polled before every step (all processes agree); True -> checkpoint and raise TrainingPreempted
    stop_requested: Callable[[], bool] | None = None
    bad_steps: int = 0          # non-finite losses seen so far (state, not configuration)


def _diverged(spec: FitSpec, what: str) -> None:
    raise TrainingDiverged(f"training stopped: {what}, {max(1, spec.bad_steps)} non-finite step(s) in all; "
                           f"checkpoints in {spec.run_dir / 'checkpoints'} are intact: lower train.lr, or allow "
                           "skipping with train.max_bad_steps")


AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _stop_now(spec: FitSpec) -> bool:
    """Whether any data-parallel process was asked to stop (so that all stop at the same step)."""
    flag = torch.tensor([1.0 if spec.stop_requested() else 0.0])
    if spec.device.type == "cuda" and torch.distributed.is_initialized():
        flag = flag.to(spec.device)
    return bool(all_reduce_sum(flag).item() > 0)


def train_one_epoch(model: nn.Module, source: DataSource, optimizer, spec: FitSpec, epoch: int,
                    scaler: torch.amp.GradScaler | None = None, start_step: int = 0, partial: dict | None = None,
                    on_step: Callable[[int, dict], Path | None] | None = None) -> dict[str, float]:
    """One epoch. ``start_step``/``partial`` continue an epoch interrupted after that many steps (the loader
    is advanced past them; augmentation and channel dropout depend only on (seed, epoch, step), so the
    remaining steps are the same as in an uninterrupted run). ``on_step(steps_done, partial)`` is called
    every ``spec.every_steps`` steps to write a mid-epoch checkpoint."""
    model.train()
    amp_dtype = AMP_DTYPES[spec.precision]
    loss_sum = torch.zeros((), device=spec.device)
    correct = torch.zeros((), device=spec.device, dtype=torch.long)
    seen = torch.zeros((), device=spec.device, dtype=torch.long)
    exact_check = spec.device.type == "cpu" or spec.max_bad_steps > 0
    nonfinite = torch.zeros((), device=spec.device, dtype=torch.long)
    if partial:
        loss_sum += partial["loss_sum"].to(spec.device)
        correct += partial["correct"].to(spec.device)
        seen += partial["seen"].to(spec.device)
    bar = tqdm(source.epoch(epoch), total=len(source), desc=f"epoch {epoch}/{spec.epochs}", leave=False,
               disable=None, unit="batch")
    for step, (images, labels) in enumerate(bar):
        if step < start_step:
            continue
        if spec.stop_requested is not None and _stop_now(spec):
            path = on_step(step, {"loss_sum": loss_sum.detach().cpu(), "correct": correct.cpu(), "seen": seen.cpu()}) \
                if on_step is not None else None
            raise TrainingPreempted(epoch, step, path)
        x = spec.train_transform(images, epoch, step)
        if spec.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(spec.device, non_blocking=True)
        subset = spec.dropout(epoch, step)
        with torch.autocast(spec.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = forward_subset(model, x, subset)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=spec.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        # Checking the loss needs a host sync. Where skipping is allowed, or on the CPU (where a sync is
        # free), check every step; otherwise accumulate and check at the periodic loss read-out below.
        if exact_check and not torch.isfinite(loss):
            spec.bad_steps += 1
            where = f"epoch {epoch} step {step} (channels {subset}, {y.shape[0]} images)"
            if spec.bad_steps > spec.max_bad_steps:
                _diverged(spec, f"the loss was {loss.item()} at {where}")
            spec.log(f"skipped a non-finite loss ({loss.item()}) at {where} [{spec.bad_steps}/{spec.max_bad_steps}]")
            continue
        if not exact_check:
            nonfinite += ~torch.isfinite(loss.detach())
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if not exact_check and nonfinite.item():
                _diverged(spec, f"a non-finite loss at epoch {epoch} between steps {max(0, step - 9)} and {step}")
        if on_step is not None and spec.every_steps and (step + 1) % spec.every_steps == 0:
            on_step(step + 1, {"loss_sum": loss_sum.detach().cpu(), "correct": correct.cpu(), "seen": seen.cpu()})
    if not exact_check and nonfinite.item():
        _diverged(spec, f"a non-finite loss in the last steps of epoch {epoch}")
    totals = all_reduce_sum(torch.stack([loss_sum.double(), correct.double(), seen.double()]))
    loss_total, correct_total, seen_total = totals.tolist()  # summed over data-parallel processes
    if seen_total == 0:
        raise DynconvError(f"epoch {epoch} trained on no batch (dataset smaller than train.batch_size, or every "
                           "step skipped): lower train.batch_size or set data.drop_last=false")
    return {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total}


@torch.no_grad()
def accuracy(model: nn.Module, source: DataSource, transform: Callable, device: torch.device) -> float:
    """Top-1 accuracy with every channel present."""
    model = unwrap(model)
    model.eval()
    correct = seen = 0
    for images, labels in source.epoch(0):
        pred = model(transform(images)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        seen += labels.shape[0]
    return correct / max(1, seen)


def fit(model: nn.Module, train: DataSource, val: DataSource | None, optimizer, scheduler, spec: FitSpec,
        start_epoch: int = 0, before_final: Callable[[nn.Module], None] | None = None,
        resume: dict | None = None) -> Path:
    """Train epochs ``start_epoch+1 .. spec.epochs``; returns the final checkpoint ``run_dir/model.pt``.

    ``before_final(model)`` runs after the last epoch and before the final checkpoint is written (e.g.
    per-subset BatchNorm re-estimation)."""
    hooks = spec.hooks if spec.is_main else []
    scaler = torch.amp.GradScaler(spec.device.type) if spec.precision == "fp16" else None
    resume = resume or {}
    if scaler is not None and resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    spec.bad_steps = int(resume.get("bad_steps", spec.bad_steps))

    def state(epoch_done: int, **extra) -> dict:
        return {"dynconv": spec.manifest, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                "epoch": epoch_done, "bad_steps": spec.bad_steps, "torch_rng": torch.get_rng_state(), **extra}
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    for h in hooks:
        h.on_fit_start({"train_samples": train.num_samples, "val_samples": val.num_samples if val else 0,
                        "start_epoch": start_epoch, "params": sum(p.numel() for p in model.parameters())})
    for epoch in range(start_epoch + 1, spec.epochs + 1):
        t0 = time.perf_counter()
        first = epoch == start_epoch + 1

        def save_mid(steps_done: int, partial: dict, epoch: int = epoch) -> Path | None:
            if not spec.is_main:
                return None
            path = atomic_torch_save(state(epoch - 1, step=steps_done, partial=partial),
                                     epoch_checkpoint(spec.run_dir, epoch, steps_done))
            prune_checkpoints(spec.run_dir, spec.keep_checkpoints)
            return path

        metrics = train_one_epoch(model, train, optimizer, spec, epoch, scaler,
                                  start_step=resume.get("step", 0) if first else 0,
                                  partial=resume.get("partial") if first else None, on_step=save_mid)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if not spec.is_main:
            continue
        if val is not None:
            metrics["val_acc"] = accuracy(model, val, spec.eval_transform, spec.device)
        if spec.epoch_eval is not None:
            metrics.update(spec.epoch_eval(unwrap(model)))
        metrics["epoch_time_s"] = time.perf_counter() - t0
        spec.log(f"epoch {epoch}/{spec.epochs}  " + "  ".join(
            f"{k} {v:.4g}" for k, v in metrics.items()))
        path = atomic_torch_save(state(epoch), epoch_checkpoint(spec.run_dir, epoch))
        prune_checkpoints(spec.run_dir, spec.keep_checkpoints)
        for h in hooks:
            h.on_epoch_end(epoch, metrics)
            h.on_checkpoint(path, epoch)
    if before_final is not None:
        before_final(unwrap(model))  # every process: calibration synchronises statistics across them
    final = spec.run_dir / "model.pt"
    if spec.is_main:
        atomic_torch_save({"dynconv": spec.manifest, "model": unwrap(model).state_dict(), "epoch": spec.epochs}, final)
        for h in hooks:
            h.on_fit_end(final)
    barrier()
    return final
