"""Multiply-accumulate counts from PyTorch's own FLOP counter (``torch.utils.flop_counter``)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_macs(model: nn.Module, in_chans: int, image_size: int | tuple[int, int]) -> int:
    """MACs of one forward pass of a single ``in_chans``×H×W image (convolutions and linear layers;
    the counter reports FLOPs = 2·MACs)."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = next(model.parameters())
    x = torch.zeros(1, in_chans, h, w, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
