"""Multiply-accumulate counts from PyTorch's own FLOP counter (``torch.utils.flop_counter``)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .channel_select import forward_subset
from .channels import Subset


@torch.no_grad()
def count_macs(model: nn.Module, in_chans: int, image_size: int | tuple[int, int],
               subset: Subset | None = None) -> int:
    """MACs of one forward pass of a single H×W image with ``in_chans`` dataset channels, of which only
    ``subset`` are present (default: all). Counts convolutions and linear layers, as PyTorch's counter
    does (it reports FLOPs = 2·MACs); a channel-adaptive model sees only the present channels."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    p = next(model.parameters())
    x = torch.zeros(1, in_chans, h, w, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            forward_subset(model, x, tuple(range(in_chans)) if subset is None else subset)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
