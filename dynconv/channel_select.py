"""Present a channel subset to a model."""
from __future__ import annotations

import torch
from torch import nn

from .channels import Subset
from .layers import DynamicConv2D


def is_channel_adaptive(model: nn.Module) -> bool:
    """True when the model's first layer accepts a varying number of input channels."""
    return any(isinstance(m, DynamicConv2D) for m in model.modules())


def select_channels(x: torch.Tensor, subset: Subset, adaptive: bool) -> torch.Tensor:
    """Keep only ``subset`` of the channels of a normalised NCHW batch.

    A channel-adaptive model receives just those channels (``x[:, subset]``); a fixed-input model
    receives every channel with the absent ones set to 0 (the dataset mean after normalisation).
    """
    if len(subset) == x.shape[1]:
        return x
    if adaptive:
        return x[:, list(subset)]
    mask = torch.zeros(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    mask[:, list(subset)] = 1
    return x * mask
