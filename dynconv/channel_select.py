"""Present a channel subset to a model."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .channels import Subset

_INDEX: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


def channel_index(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    """``ids`` as an index tensor on ``device``, made once per (ids, device).

    Indexing a CUDA tensor with a Python list copies the list to the device on every call, and that copy
    waits for the GPU to finish all queued work (a stream synchronisation): the CPU can no longer queue the
    next kernels while the GPU runs, every step.
    """
    key = (tuple(ids), torch.device(device))
    index = _INDEX.get(key)
    if index is None:
        index = _INDEX[key] = torch.tensor(key[0], dtype=torch.long, device=key[1])
    return index


def take(t: torch.Tensor, dim: int, ids: Sequence[int]) -> torch.Tensor:
    """``t`` restricted to ``ids`` along ``dim`` (``t[:, ids]`` for ``dim=1``) without a copy of ``ids`` to the
    device per call (:func:`channel_index`)."""
    return t.index_select(dim, channel_index(ids, t.device))


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
            return take(x.permute(0, 2, 3, 1), 3, subset).permute(0, 3, 1, 2)
        return take(x, 1, subset)
    mask = torch.zeros(1, x.shape[1], 1, 1, device=x.device, dtype=x.dtype)
    mask.index_fill_(1, channel_index(subset, x.device), x.shape[1] / len(subset) if rescale else 1)
    return x * mask


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def forward_subset(model: nn.Module, x: torch.Tensor, subset: Subset) -> torch.Tensor:
    """Logits of ``model`` for the normalised full-channel batch ``x`` restricted to ``subset``."""
    return model(select_channels(x, subset, is_channel_adaptive(model), fills_rescaled(model)), channels=subset)
