"""Optimisers and LR schedules from plain arguments."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import DynconvError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")


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


def build_scheduler(optimizer, name: str, epochs: int):
    """Stepped once per epoch."""
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise DynconvError(f"unknown LR schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
