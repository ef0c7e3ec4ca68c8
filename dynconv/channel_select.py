"""Present a channel subset to a model."""
from __future__ import annotations

import torch
from torch import nn

from .channels import Subset


def is_channel_adaptive(model: nn.Module) -> bool:
    """True when the model's first layer accepts a varying set of input channels."""
    return bool(getattr(getattr(model, "module", model), "channel_adaptive", False))  # DDP wraps the model


def fills_rescaled(model: nn.Module) -> bool:
    """True when a fixed-input model scales its present channels by C/k (``model.fill_rescale``)."""
    return bool(getattr(getattr(model, "module", model), "fill_rescale", False))


def select_channels(x: torch.Tensor, subset: Subset, adaptive: bool, rescale: bool = False) -> torch.Tensor:
    """Keep only ``subset`` of the channels of a normalised NCHW batch.

    A channel-adaptive model receives just those channels (``x[:, subset]``); a fixed-input model
    receives every channel with the absent ones set to 0 (the dataset mean after normalisation), and with
    ``rescale`` the present ones multiplied by C/k (ChannelViT's baseline: the input keeps its scale).
    """
    if len(subset) == x.shape[1]:
        return x
    if adaptive:
        if _channels_last(x):  # gathered in NHWC order, the result is channels_last too (x[:, ids] is NCHW, which
            # with one channel is also "channels_last-contiguous", so the model would run NCHW after its stem)
            return x.permute(0, 2, 3, 1)[..., list(subset)].permute(0, 3, 1, 2)
        return x[:, list(subset)]
    mask = torch.zeros(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    mask[:, list(subset)] = x.shape[1] / len(subset) if rescale else 1
    return x * mask


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def forward_subset(model: nn.Module, x: torch.Tensor, subset: Subset) -> torch.Tensor:
    """Logits of ``model`` for the normalised full-channel batch ``x`` restricted to ``subset``."""
    return model(select_channels(x, subset, is_channel_adaptive(model), fills_rescaled(model)), channels=subset)
