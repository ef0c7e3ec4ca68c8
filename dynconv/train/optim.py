"""Optimisers and LR schedules from plain arguments."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..errors import DynconvError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant", "step", "onecycle")
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch.optim.lr_scheduler.OneCycleLR's defaults


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on BatchNorm parameters and biases (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9):
    groups = param_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise DynconvError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def lr_factor(epoch: int, name: str, epochs: int, warmup_epochs: int = 0, step_size: int = 30,
              gamma: float = 0.1) -> float:
    """Multiplier of the base learning rate after ``epoch`` scheduler steps (0 = the first epoch).

    A linear warm-up over ``warmup_epochs`` (from base/(w+1) up to base), then ``cosine`` decay to 0 over
    the remaining epochs, ``constant``, or ``step``: × ``gamma`` every ``step_size`` epochs."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    e, n = epoch - warmup_epochs, max(1, epochs - warmup_epochs)
    if name == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(e, n) / n))
    if name == "step":
        return gamma ** (e // max(1, step_size))
    return 1.0


def onecycle_factor(step: int, total_steps: int, pct_start: float = 0.3) -> float:
    """One-cycle multiplier of the base (= peak) learning rate after ``step`` optimiser steps, as
    ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, two phases): from base/25 up to base over the first
    ``pct_start`` of the steps, then down to base/25/1e4."""
    lo, hi, end = 1 / ONECYCLE_DIV, 1.0, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    rise_end = float(pct_start * total_steps) - 1
    if step <= rise_end:
        start, stop, pct = lo, hi, step / rise_end if rise_end > 0 else 1.0
    else:
        span = (total_steps - 1) - rise_end
        start, stop, pct = hi, end, min(1.0, (step - rise_end) / span) if span > 0 else 1.0
    return stop + (start - stop) / 2 * (1 + math.cos(math.pi * pct))


def build_scheduler(optimizer, name: str, epochs: int, warmup_epochs: int = 0, step_size: int = 30,
                    gamma: float = 0.1, steps_per_epoch: int = 1, pct_start: float = 0.3):
    """A ``LambdaLR`` whose state (its step count) is saved in every checkpoint. Stepped once per epoch,
    except ``onecycle``, which is stepped after every optimiser step (its ``per_step`` attribute is True)."""
    if name not in SCHEDULES:
        raise DynconvError(f"unknown LR schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    if warmup_epochs >= max(1, epochs) and warmup_epochs:
        raise DynconvError(f"train.warmup_epochs={warmup_epochs} must be smaller than train.epochs={epochs}")
    if name == "onecycle":
        if warmup_epochs:
            raise DynconvError("train.scheduler=onecycle has its own warm-up (train.pct_start): set train.warmup_epochs=0")
        factor = functools.partial(onecycle_factor, total_steps=epochs * max(1, steps_per_epoch), pct_start=pct_start)
    else:
        factor = functools.partial(lr_factor, name=name, epochs=epochs, warmup_epochs=warmup_epochs,
                                   step_size=step_size, gamma=gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scheduler.per_step = name == "onecycle"
    return scheduler
