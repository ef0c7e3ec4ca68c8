"""Optimisers and LR schedules from plain arguments."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ..choices import LR_SCHEDULES, OPTIMIZERS, check_choice
from ..errors import DynconvError

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
    if check_choice(name, OPTIMIZERS, "optimizer") == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


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


def _anneal(start: float, stop: float, pct: float) -> float:
    return stop + (start - stop) / 2 * (1 + math.cos(math.pi * pct))


def _onecycle_phase(step: int, total_steps: int, pct_start: float) -> tuple[bool, float]:
    """(rising?, progress in that phase) after ``step`` optimiser steps, as torch's two-phase OneCycleLR."""
    rise_end = float(pct_start * total_steps) - 1
    if step <= rise_end:
        return True, step / rise_end if rise_end > 0 else 1.0
    span = (total_steps - 1) - rise_end
    return False, min(1.0, (step - rise_end) / span) if span > 0 else 1.0


def onecycle_factor(step: int, total_steps: int, pct_start: float = 0.3) -> float:
    """One-cycle multiplier of the base (= peak) learning rate after ``step`` optimiser steps, as
    ``torch.optim.lr_scheduler.OneCycleLR`` (cosine, two phases): from base/25 up to base over the first
    ``pct_start`` of the steps, then down to base/25/1e4."""
    lo, end = 1 / ONECYCLE_DIV, 1 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)
    rising, pct = _onecycle_phase(step, total_steps, pct_start)
    return _anneal(lo, 1.0, pct) if rising else _anneal(1.0, end, pct)


def onecycle_momentum(step: int, total_steps: int, pct_start: float, base: float, peak: float) -> float:
    """The momentum that goes with :func:`onecycle_factor` (torch's ``cycle_momentum``): from ``peak`` down
    to ``base`` while the learning rate rises, then back up to ``peak``."""
    rising, pct = _onecycle_phase(step, total_steps, pct_start)
    return _anneal(peak, base, pct) if rising else _anneal(base, peak, pct)


class OneCycle(torch.optim.lr_scheduler.LambdaLR):
    """torch's ``OneCycleLR`` (cosine, div 25, final div 1e4, ``cycle_momentum``) as a ``LambdaLR`` whose
    state is one step counter; stepped after every optimiser step. ``momentum=(base, peak)`` cycles SGD's
    momentum (Adam's beta1) inversely to the learning rate; ``None`` leaves it alone."""

    per_step = True

    def __init__(self, optimizer, total_steps: int, pct_start: float, momentum: tuple[float, float] | None):
        self.total_steps, self.pct_start, self.momentum = total_steps, pct_start, momentum
        super().__init__(optimizer, functools.partial(onecycle_factor, total_steps=total_steps, pct_start=pct_start))

    def step(self, epoch=None) -> None:
        super().step(epoch)
        if self.momentum is None:
            return
        m = onecycle_momentum(self.last_epoch, self.total_steps, self.pct_start, *self.momentum)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (m, *group["betas"][1:])
            else:
                group["momentum"] = m


def build_scheduler(optimizer, name: str, epochs: int, warmup_epochs: int = 0, step_size: int = 30,
                    gamma: float = 0.1, steps_per_epoch: int = 1, pct_start: float = 0.3,
                    momentum: tuple[float, float] | None = None):
    """A ``LambdaLR`` whose state (its step count) is saved in every checkpoint. Stepped once per epoch,
    except ``onecycle``, which is stepped after every optimiser step (its ``per_step`` attribute is True) and
    cycles the momentum between ``momentum=(base, peak)`` when given."""
    check_choice(name, LR_SCHEDULES, "LR schedule")
    if warmup_epochs >= max(1, epochs) and warmup_epochs:
        raise DynconvError(f"train.warmup_epochs={warmup_epochs} must be smaller than train.epochs={epochs}")
    if name == "onecycle":
        if warmup_epochs:
            raise DynconvError("train.scheduler=onecycle has its own warm-up (train.pct_start): set train.warmup_epochs=0")
        return OneCycle(optimizer, epochs * max(1, steps_per_epoch), pct_start, momentum)
    factor = functools.partial(lr_factor, name=name, epochs=epochs, warmup_epochs=warmup_epochs,
                               step_size=step_size, gamma=gamma)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scheduler.per_step = False
    return scheduler
