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
from .checkpoint import atomic_torch_save, epoch_checkpoint, prune_checkpoints
from .hooks import Hook


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
    hooks: Sequence[Hook] = field(default_factory=tuple)
    log: Callable[[str], None] = print


def train_one_epoch(model: nn.Module, source: DataSource, optimizer, spec: FitSpec, epoch: int) -> dict[str, float]:
    model.train()
    loss_sum = torch.zeros((), device=spec.device)
    correct = torch.zeros((), device=spec.device, dtype=torch.long)
    seen = 0
    bar = tqdm(source.epoch(epoch), total=len(source), desc=f"epoch {epoch}/{spec.epochs}", leave=False,
               disable=None, unit="batch")
    for step, (images, labels) in enumerate(bar):
        x = spec.train_transform(images, epoch, step)
        y = labels.to(spec.device, non_blocking=True)
        logits = forward_subset(model, x, spec.dropout(epoch, step))
        loss = F.cross_entropy(logits, y, label_smoothing=spec.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.shape[0]
        correct += (logits.argmax(1) == y).sum()
        seen += y.shape[0]
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if seen == 0:
        raise RuntimeError("the training loader produced no batches (dataset smaller than one batch?)")
    loss_value = loss_sum.item() / seen
    if not torch.isfinite(torch.tensor(loss_value)):
        raise FloatingPointError(f"training loss became {loss_value} in epoch {epoch}: lower train.lr")
    return {"train_loss": loss_value, "train_acc": correct.item() / seen}


@torch.no_grad()
def accuracy(model: nn.Module, source: DataSource, transform: Callable, device: torch.device) -> float:
    """Top-1 accuracy with every channel present."""
    model.eval()
    correct = seen = 0
    for images, labels in source.epoch(0):
        pred = model(transform(images)).argmax(1).cpu()
        correct += int((pred == labels).sum())
        seen += labels.shape[0]
    return correct / max(1, seen)


def fit(model: nn.Module, train: DataSource, val: DataSource | None, optimizer, scheduler, spec: FitSpec,
        start_epoch: int = 0, before_final: Callable[[nn.Module], None] | None = None) -> Path:
    """Train epochs ``start_epoch+1 .. spec.epochs``; returns the final checkpoint ``run_dir/model.pt``.

    ``before_final(model)`` runs after the last epoch and before the final checkpoint is written (e.g.
    per-subset BatchNorm re-estimation)."""
    for h in spec.hooks:
        h.on_fit_start({"train_samples": train.num_samples, "val_samples": val.num_samples if val else 0,
                        "start_epoch": start_epoch, "params": sum(p.numel() for p in model.parameters())})
    for epoch in range(start_epoch + 1, spec.epochs + 1):
        t0 = time.perf_counter()
        metrics = train_one_epoch(model, train, optimizer, spec, epoch)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if val is not None:
            metrics["val_acc"] = accuracy(model, val, spec.eval_transform, spec.device)
        metrics["epoch_time_s"] = time.perf_counter() - t0
        spec.log(f"epoch {epoch}/{spec.epochs}  " + "  ".join(
            f"{k} {v:.4g}" for k, v in metrics.items()))
        path = atomic_torch_save({"dynconv": spec.manifest, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "epoch": epoch}, epoch_checkpoint(spec.run_dir, epoch))
        prune_checkpoints(spec.run_dir, spec.keep_checkpoints)
        for h in spec.hooks:
            h.on_epoch_end(epoch, metrics)
            h.on_checkpoint(path, epoch)
    if before_final is not None:
        before_final(model)
    final = atomic_torch_save({"dynconv": spec.manifest, "model": model.state_dict(), "epoch": spec.epochs},
                              spec.run_dir / "model.pt")
    for h in spec.hooks:
        h.on_fit_end(final)
    return final
