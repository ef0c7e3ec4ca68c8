"""The training loop (one for every strategy): gradient accumulation, channel dropout per step, progressive
resizing, per-epoch validation, atomic checkpoints, hooks."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..channel_select import forward_subset
from ..channels import Subset, subset_name
from ..data.loaders import DataSource
from ..data.mixture import MixturePart
from ..dropout import ChannelDropout
from ..errors import DynconvError
from ..evaluate import predict_subsets, subset_accuracies
from ..metric_names import (DATA_WAIT, EPOCH_TIME, IMAGE_PASSES, MEAN_SUBSET_ACC, TRAIN_ACC, TRAIN_LOSS, TRAIN_MACS,
                            TRAIN_SECONDS, VAL, VAL_ACC, WORST_SUBSET_ACC, metric_name)
from .checkpoint import atomic_torch_save, epoch_checkpoint, prune_checkpoints
from .distributed import all_reduce_sum, any_rank, barrier, unwrap
from .ema import WeightEMA
from .hooks import FitResult, Hook, TrainingDiverged, TrainingPreempted, in_role_order, overrides
from .resize import resize_batch
from .strategies import Strategy

log = logging.getLogger("dynconv")


@dataclass
class FitSpec:
    """Everything ``fit`` needs besides the strategy (model, optimiser, processes), data and LR schedule."""

    epochs: int
    device: torch.device
    train_transform: Callable   # (source batch, epoch, micro-step) -> float batch on device
    eval_transform: Callable    # source batch -> float batch on device
    dropout: ChannelDropout
    run_dir: Path
    manifest: dict              # written into every checkpoint (model name/kwargs, channels, ...)
    label_smoothing: float = 0.0
    keep_checkpoints: int = 2
    max_bad_steps: int = 0      # non-finite losses tolerated (their updates skipped) before training stops
    every_steps: int = 0        # also checkpoint every this many optimiser steps within an epoch (0: epoch ends)
    channels_last: bool = False  # inputs in channels_last (the strategy converts the model)
    resolution: Callable[[int], int] | None = None  # epoch -> training resolution (progressive resizing)
    hooks: Sequence[Hook] = field(default_factory=tuple)  # called by role (hooks.py), in this order within one
    val_subsets: Sequence[Subset] = ()  # also score these subsets every epoch (val_acc_<subset>, mean, worst)
    teacher: nn.Module | None = None  # distillation: it sees the full input, the student the subset
    distill_alpha: float = 0.5        # loss = (1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T
    distill_temperature: float = 2.0
    inplace_distill: bool = False     # a sandwich's other passes learn from its first (full input) pass's predictions
    inplace_temperature: float = 1.0
    subset_macs: dict | None = None   # forward MACs per image of each subset: the epoch's training compute (train_macs)
    ema: WeightEMA | None = None      # an average of the weights, updated after every optimiser step
    ship_ema: bool = False            # evaluate the average and write it as model.pt
    channels: str = "RGB"        # the dataset's channel names (for the per-subset metric names)
    log_every_steps: int = 0     # a progress line (step, loss, images/s, time left) every N steps; 0: none
    table_every: int = 0         # the val_subsets' accuracies as a table every N epochs; 0: none
    parts: Sequence[MixturePart] = ()  # training on a mixture: its datasets (batches are tagged with their index)
    bad_steps: int = 0          # non-finite losses seen so far (state, not configuration)


def _diverged(spec: FitSpec, what: str) -> None:
    raise TrainingDiverged(f"training stopped: {what}, {max(1, spec.bad_steps)} non-finite step(s) in all; "
                           f"checkpoints in {spec.run_dir / 'checkpoints'} are intact: lower train.lr, or allow "
                           "skipping with train.max_bad_steps")


def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target loss: T² · KL(softmax(teacher/T) ‖ softmax(student/T)), per image."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                    reduction="batchmean") * t * t


PARTIAL_KEYS = ("loss_sum", "correct", "seen", "image_passes", "macs")  # an epoch's sums, kept in mid-epoch checkpoints


def _micro_batch(strategy: Strategy, spec: FitSpec, x: torch.Tensor, y: torch.Tensor,
                 passes: Sequence[tuple[Subset, float]], final: bool, done: int, acc: torch.Tensor,
                 nonfinite: torch.Tensor | None, where: str) -> torch.Tensor | None:
    """Forward and backward of one micro-batch, once per pass (subset, loss weight); adds to ``acc`` (loss, correct
    and images weighted by pass, image passes, MACs). ``done``: micro-steps of this optimiser step before it.
    Returns the micro-batch's loss (weighted over passes), or None after a non-finite one (the step dropped).
    ``nonfinite``: where to count non-finite losses when they are not checked at once (None: check each)."""
    model, n = strategy.model, y.shape[0]
    target = None
    if spec.teacher is not None:
        with torch.no_grad(), strategy.autocast():
            target = spec.teacher(x).float()  # every channel
    total = x.new_zeros((), dtype=torch.float32)
    full = None  # the first (full input) pass's detached logits: the others' targets under in-place distillation
    for i, (subset, weight) in enumerate(passes):
        with strategy.micro_step(final=final and i == len(passes) - 1):
            with strategy.autocast():
                logits = forward_subset(model, x, subset).float()
            if full is not None:  # the sandwich's other passes learn from the full input's
                loss = distillation(logits, full, spec.inplace_temperature)
            else:
                loss = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
                if target is not None:
                    loss = (1 - spec.distill_alpha) * loss + spec.distill_alpha * distillation(
                        logits, target, spec.distill_temperature)
            if i == 0 and spec.inplace_distill:
                full = logits.detach()
            # Checking the loss needs a host sync. Where skipping is allowed, or on the CPU (where a sync is free),
            # check every pass (all processes decide together); otherwise count, checked at the periodic read-out.
            if nonfinite is None and any_rank(not torch.isfinite(loss), spec.device):
                spec.bad_steps += 1
                where = f"{where} (channels {subset}, {n} images)"
                if spec.bad_steps > spec.max_bad_steps:
                    _diverged(spec, f"the loss was {loss.item()} at {where}")
                if strategy.is_main:
                    log.info(f"skipped a non-finite loss ({loss.item()}) at {where} "
                             f"[{spec.bad_steps}/{spec.max_bad_steps}]")
                strategy.discard(done + i)
                return None
            if nonfinite is not None:
                nonfinite += ~torch.isfinite(loss.detach())
            strategy.backward(loss * weight)
        total += loss.detach() * weight
        acc[1] += (logits.argmax(1) == y).sum() * weight
        acc[4] += spec.subset_macs.get(subset, 0.0) * n if spec.subset_macs else 0.0
    acc[0] += total.double() * n
    acc[2] += n
    acc[3] += n * len(passes)
    return total


class _Waits:
    """An iterator's items, adding up in ``seconds`` the time the caller spent waiting for them."""

    def __init__(self, items):
        self.items, self.seconds = iter(items), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - t0


def _groups(batches: Iterator, k: int) -> Iterator[tuple]:
    """Consecutive groups of ``k`` micro-batches (one optimiser step each); a shorter rest is dropped."""
    return zip(*[batches] * k)


def train_one_epoch(strategy: Strategy, source: DataSource, spec: FitSpec, epoch: int, start_step: int = 0,
                    partial: dict | None = None, on_step: Callable[[int, dict], Path | None] | None = None,
                    scheduler=None) -> dict[str, float]:
    """One epoch of optimiser steps, each over ``strategy.grad_accum_steps`` consecutive loader batches
    (micro-batches; a rest too short for a step is not used). ``start_step``/``partial`` continue an epoch
    interrupted after that many steps (the loader is advanced past them; augmentation, resolution and channel
    dropout depend only on (seed, epoch, step), so the remaining steps are the same as in an uninterrupted
    run). ``on_step(steps_done, partial)`` is called on every process every ``spec.every_steps`` steps to
    write a mid-epoch checkpoint; a per-step ``scheduler`` (``scheduler.per_step``) is stepped after each step."""
    model, k = strategy.model, strategy.grad_accum_steps
    model.train()
    steps = len(source) // k
    if steps == 0 and k > 1:
        raise DynconvError(f"epoch {epoch} has {len(source)} batches, fewer than train.grad_accum_steps={k}: lower "
                           "train.grad_accum_steps or train.batch_size")
    per_step = scheduler is not None and getattr(scheduler, "per_step", False)
    res = spec.resolution(epoch) if spec.resolution is not None else None
    acc = torch.zeros(len(PARTIAL_KEYS), device=spec.device, dtype=torch.float64)  # sums on this process
    exact_check = spec.device.type == "cpu" or spec.max_bad_steps > 0
    nonfinite = torch.zeros((), device=spec.device, dtype=torch.long)
    if partial and strategy.is_main:  # the checkpoint holds the sums over all processes
        acc += torch.tensor([float(partial.get(key, 0)) for key in PARTIAL_KEYS], dtype=acc.dtype).to(acc)

    def totals() -> dict:  # every process calls this (an all-reduce) at checkpoints
        t = all_reduce_sum(acc.clone()).cpu()
        return dict(zip(PARTIAL_KEYS, t))

    # one micro-batch per step is done with before the next is drawn: no copy of FFCV's buffers needed
    bar = tqdm(source.epoch(epoch, copy=k > 1), total=len(source), desc=f"epoch {epoch}/{spec.epochs}", leave=False,
               disable=None if strategy.is_main else True, unit="batch")
    batches = _Waits(bar)  # the loop's time blocked on the loader: data_wait_s
    stoppers = [h for h in spec.hooks if overrides(h, "should_stop")]  # the same hooks on every process
    t_start = time.perf_counter()
    loss = torch.full((), float("nan"))  # the last finite micro-batch loss, for progress lines
    for step, group in enumerate(_groups(batches, k)):
        if step < start_step:
            continue
        if stoppers and any_rank(any(h.should_stop() for h in stoppers), spec.device):
            raise TrainingPreempted(epoch, step, on_step(step, totals()) if on_step is not None else None)
        passes = spec.dropout.passes(epoch, step)
        for j, (images, labels, *tag) in enumerate(group):
            part = spec.parts[tag[0]] if spec.parts else None
            x = (part.transform if part is not None else spec.train_transform)(images, epoch, step * k + j)
            if res is not None:
                x = resize_batch(x, res)
            if part is not None:  # the dataset's channels, dropped within them, as channels of the model
                x = part.place(x)
                passes = [(part.to_model(s), w) for s, w in part.dropout.passes(epoch, step)]
            if spec.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels.to(spec.device, non_blocking=True)
            out = _micro_batch(strategy, spec, x, y, passes, final=j == k - 1, done=j * len(passes), acc=acc,
                               nonfinite=None if exact_check else nonfinite, where=f"epoch {epoch} step {step}")
            if out is None:  # a non-finite loss: this step's update is dropped
                break
            loss = out
        else:
            strategy.step()
            if spec.ema is not None:
                spec.ema.update(strategy.module)
        if per_step:
            scheduler.step()
        if spec.log_every_steps and strategy.is_main and (step + 1) % spec.log_every_steps == 0 and step + 1 < steps:
            done = step + 1 - start_step
            rate = done * len(labels) * k * strategy.dist.world / max(time.perf_counter() - t_start, 1e-9)
            left = (steps - step - 1) * (time.perf_counter() - t_start) / max(done, 1)
            log.info(f"  epoch {epoch}/{spec.epochs} step {step + 1}/{steps}  loss {loss.item():.4g}  "
                     f"{rate:,.0f} img/s  {int(left) // 60}:{int(left) % 60:02d} left in the epoch")
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if not exact_check and nonfinite.item():
                _diverged(spec, f"a non-finite loss at epoch {epoch} between steps {max(0, step - 9)} and {step}")
        if on_step is not None and spec.every_steps and (step + 1) % spec.every_steps == 0:
            on_step(step + 1, totals())
    for _ in batches:  # the rest too short for a step: let the loader finish its epoch
        pass
    if not exact_check and nonfinite.item():
        _diverged(spec, f"a non-finite loss in the last steps of epoch {epoch}")
    loss_total, correct_total, seen_total, passes_total, macs_total = all_reduce_sum(acc).tolist()  # all processes
    if seen_total == 0:
        raise DynconvError(f"epoch {epoch} trained on no batch (dataset smaller than train.batch_size, or every "
                           "step skipped): lower train.batch_size or set data.drop_last=false")
    metrics = {"train_loss": loss_total / seen_total, "train_acc": correct_total / seen_total,
               DATA_WAIT: batches.seconds, IMAGE_PASSES: passes_total}
    if spec.subset_macs:
        metrics[TRAIN_MACS] = macs_total
    if res is not None:
        metrics["train_res"] = res
    return metrics


@torch.no_grad()
def accuracy(model: nn.Module, source: DataSource, transform: Callable, device: torch.device,
             subset: Subset | None = None) -> float:
    """Top-1 accuracy with every channel present (or with ``subset`` of the model's channels)."""
    model = unwrap(model)
    model.eval()
    correct = seen = 0
    for images, labels in source.epoch(0):
        x = transform(images)
        pred = (model(x) if subset is None else forward_subset(model, x, subset)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        seen += labels.shape[0]
    return correct / max(1, seen)


def mixture_accuracies(module: nn.Module, val, parts: Sequence[MixturePart], device: torch.device) -> dict[str, float]:
    """``val_acc:<dataset>`` on each dataset's validation set with all of its channels, and ``val_acc``: their
    mean (every dataset counts the same, whatever its size); with the parts' ``val_subsets``, also
    ``val_acc_<dataset>:<subset>`` and their mean and worst."""
    accs = {f"val_acc:{p.name}": accuracy(module, source, p.model_transform, device,
                                           p.to_model(tuple(range(len(p.positions)))))
            for p, source in zip(parts, val.sources)}
    out = {"val_acc": sum(accs.values()) / len(accs), **accs}
    per_subset = {}
    for p, source in zip(parts, val.sources):
        if p.val_subsets:
            y, preds = predict_subsets(unwrap(module), source.epoch(0), p.model_transform,
                                       [p.to_model(s) for s in p.val_subsets], device)
            per_subset.update({metric_name("accuracy", f"{p.name}:{subset_name(s, p.channels)}", per_epoch=True):
                               float((preds[p.to_model(s)] == y).mean()) for s in p.val_subsets})
    if per_subset:
        out.update(per_subset)
        out[metric_name(MEAN_SUBSET_ACC, per_epoch=True)] = sum(per_subset.values()) / len(per_subset)
        out[metric_name(WORST_SUBSET_ACC, per_epoch=True)] = min(per_subset.values())
    return out


LINE_WIDTH = 100  # the epoch line and the per-subset table fit a 100-column terminal


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """The epoch's line: loss, accuracy (validation, else training), mean and worst subset, time and data wait,
    named as in MLflow (``curves/train_loss``, ``time/epoch_s``, ``time/data_wait_s``); every metric is logged."""
    acc = VAL_ACC if VAL_ACC in metrics else TRAIN_ACC
    groups = [[(TRAIN_LOSS, TRAIN_LOSS, "{:.3f}"), (acc, acc, "{:.1%}"), ("mean", VAL + MEAN_SUBSET_ACC, "{:.1%}"),
               ("worst", VAL + WORST_SUBSET_ACC, "{:.1%}")],
              [("epoch_s", EPOCH_TIME, None), ("data_wait_s", DATA_WAIT, None)]]  # curves/, time/
    parts = [f"epoch {epoch}/{epochs}"] + [" ".join(f"{name}={fmt.format(v) if fmt else _seconds(v)}"
                                                    for name, key, fmt in group if (v := metrics.get(key)) is not None)
                                           for group in groups]
    return "  ".join(p for p in parts if p)


def _seconds(value: float) -> str:
    """3 significant digits, whole seconds from 100 s."""
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def subset_table_lines(metrics: dict[str, float], channels: str, subsets: Sequence[Subset]) -> list[str]:
    """The epoch's per-subset validation accuracies (``val_acc_<subset>``) as rows of ``subset acc`` cells."""
    cells = [f"{subset_name(s, channels):>6} {metrics[k]:6.1%}" for s in subsets
             if (k := metric_name("accuracy", subset_name(s, channels), per_epoch=True)) in metrics]
    per_row = max(1, (LINE_WIDTH - 2) // 16)
    return ["  " + "  ".join(cells[i:i + per_row]) for i in range(0, len(cells), per_row)]


def validate(module: nn.Module, val: DataSource, spec: FitSpec) -> dict[str, float]:
    """``val_acc`` (every channel) and, with ``spec.val_subsets``, ``val_acc_<subset>`` and their mean/worst."""
    if spec.parts:
        return mixture_accuracies(module, val, spec.parts, spec.device)
    metrics = {"val_acc": accuracy(module, val, spec.eval_transform, spec.device)}
    if spec.val_subsets:
        metrics.update(subset_accuracies(module, val.epoch(0), spec.eval_transform, list(spec.val_subsets),
                                         spec.channels, spec.device))
    return metrics


def shipped(live: nn.Module, spec: FitSpec) -> nn.Module:
    """The model that is evaluated and written as ``model.pt``: the weight average, or the live weights."""
    return spec.ema.module if spec.ema is not None and spec.ship_ema else live


def fit(strategy: Strategy, train: DataSource, val: DataSource | None, scheduler, spec: FitSpec,
        start_epoch: int = 0, resume: dict | None = None) -> FitResult:
    """Train epochs ``start_epoch+1 .. spec.epochs`` with a set-up ``strategy``, calling ``spec.hooks`` at
    each event (``hooks.py``); returns the :class:`FitResult` (``run_dir/model.pt``: plain fp32 weights,
    whatever the strategy). ``resume``: the client state of the checkpoint continued from (``step``,
    ``partial``, ``bad_steps``)."""
    hooks = in_role_order(spec.hooks)
    main_hooks = hooks if strategy.is_main else []
    try:
        return _fit(strategy, train, val, scheduler, spec, start_epoch, resume or {}, hooks, main_hooks)
    except BaseException as e:
        for h in main_hooks:
            h.on_exception(e)
        raise


def _fit(strategy: Strategy, train: DataSource, val: DataSource | None, scheduler, spec: FitSpec, start_epoch: int,
         resume: dict, hooks: list[Hook], main_hooks: list[Hook]) -> FitResult:
    spec.bad_steps = int(resume.get("bad_steps", spec.bad_steps))
    per_step = getattr(scheduler, "per_step", False)
    compute = {IMAGE_PASSES: 0.0, TRAIN_MACS: 0.0, TRAIN_SECONDS: 0.0,  # training compute so far
               **(resume.get("compute") or {})}

    def save(epoch_done: int, epoch: int, step: int | None = None, partial: dict | None = None,
             metrics: dict | None = None) -> Path | None:
        state = {"dynconv": spec.manifest, "scheduler": scheduler.state_dict(), "epoch": epoch_done,
                 "bad_steps": spec.bad_steps, "torch_rng": torch.get_rng_state(), "compute": dict(compute)}
        if metrics is not None:  # the finished epoch's (main process): a job killed before it logged them resumes
            state["epoch_metrics"] = metrics  # after this epoch, and its tracking hook logs them then
        if spec.ema is not None:
            state["ema"] = spec.ema.state_dict()
        if step is not None:
            state.update(step=step, partial=partial)
        path = strategy.save(state, epoch_checkpoint(spec.run_dir, epoch, step))
        if strategy.is_main:
            prune_checkpoints(spec.run_dir, spec.keep_checkpoints)
        return path

    for h in main_hooks:
        h.on_fit_start({"train_samples": train.num_samples, "val_samples": val.num_samples if val else 0,
                        "start_epoch": start_epoch, "params": sum(p.numel() for p in strategy.module.parameters()),
                        "start_epoch_metrics": resume.get("epoch_metrics")})
    metrics: dict[str, float] = {}
    for epoch in range(start_epoch + 1, spec.epochs + 1):
        t0 = time.perf_counter()
        first = epoch == start_epoch + 1
        metrics = train_one_epoch(strategy, train, spec, epoch, start_step=resume.get("step", 0) if first else 0,
                                  partial=resume.get("partial") if first else None,
                                  on_step=lambda steps, partial, e=epoch: save(e - 1, e, steps, partial),
                                  scheduler=scheduler)
        metrics["lr"] = strategy.optimizer.param_groups[0]["lr"]
        for key in [k for k in compute if k in metrics]:  # logged as the totals so far
            compute[key] += metrics[key]
            metrics[key] = compute[key]
        if not per_step:
            scheduler.step()
        live = strategy.eval_module()
        module = shipped(live, spec)
        for h in hooks:
            metrics.update(h.before_validation(module, epoch) or {})
        if strategy.is_main:
            if val is not None:
                metrics.update(validate(module, val, spec))
                if spec.ema is not None:  # the other of the two, on every channel
                    other = live if module is spec.ema.module else spec.ema.module
                    key = "val_acc_live" if other is live else "val_acc_ema"
                    metrics[key] = accuracy(other, val, spec.eval_transform, spec.device)
            metrics[EPOCH_TIME] = time.perf_counter() - t0
            compute[TRAIN_SECONDS] += metrics[EPOCH_TIME]
            log.info(epoch_line(epoch, spec.epochs, metrics))
            if per_dataset := [f"{k}={v:.1%}" for k, v in metrics.items() if k.startswith(VAL_ACC + ":")]:
                log.info("  " + "  ".join(per_dataset))  # a mixture: each dataset's full-input accuracy
            if spec.table_every and epoch % spec.table_every == 0:
                for line in subset_table_lines(metrics, spec.channels, spec.val_subsets):
                    log.info(line)
        path = save(epoch, epoch, metrics=metrics if strategy.is_main else None)
        for h in main_hooks:
            h.on_epoch_end(epoch, metrics, path)
    module = shipped(strategy.eval_module(), spec)
    for h in hooks:
        h.before_final(module)  # every process: calibration synchronises statistics across them
    final = spec.run_dir / "model.pt"
    result = FitResult(final, module, spec.epochs, metrics, compute=compute)
    if strategy.is_main:
        atomic_torch_save({"dynconv": spec.manifest, "model": module.state_dict(), "epoch": spec.epochs}, final)
        for h in main_hooks:
            h.on_fit_end(result)
    barrier()
    return result
