"""Stems whose per-channel filters are *built* rather than stored: template mixing and a hypernetwork
(two of the channel-adaptive strategies benchmarked by CHAMMI, Chen et al., NeurIPS 2023)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic_conv import present_channels


class _GeneratedConv(nn.Module):
    """Shared plumbing: ``channel_filters(ids)`` gives ``(out, |ids|, k, k)``; the conv uses just those."""

    mode = ""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding = stride, padding
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        ids = present_channels(x, channels, self.in_channels, self.mode)
        return F.conv2d(x, self.channel_filters(ids), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class TemplateMixingConv2d(_GeneratedConv):
    """Per-channel filters mixed from ``K`` shared templates ``T_k`` (out × k × k):

        W[:, i] = Σ_k α[i, k] · T_k,      y = conv(x, W[:, S]) + b

    so channels share structure through the templates and differ only by their mixing weights ``α[i]``.
    """

    mode = "template_mixing"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, num_templates: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        k = num_templates or max(2, in_channels)
        self.templates = nn.Parameter(torch.empty(k, out_channels, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.templates, mode="fan_out", nonlinearity="relu")
        self.mix = nn.Parameter(torch.randn(in_channels, k) / math.sqrt(k))

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        return torch.einsum("ck,kohw->ochw", self.mix[ids], self.templates)


class HyperNetConv2d(_GeneratedConv):
    """Per-channel filters generated from a learned channel embedding ``e_i`` by a small MLP ``h``:

        W[:, i] = h(e_i) reshaped to out × k × k,      y = conv(x, W[:, S]) + b
    """

    mode = "hypernet"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, embed_dim: int = 32, hidden: int = 64):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        self.embedding = nn.Parameter(torch.randn(in_channels, embed_dim))
        self.generator = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, out_channels * kernel_size * kernel_size))
        fan_out = out_channels * kernel_size * kernel_size  # kaiming (fan_out) scale for the generated filters
        nn.init.normal_(self.generator[-1].weight, std=math.sqrt(2.0 / fan_out) / math.sqrt(hidden))
        nn.init.zeros_(self.generator[-1].bias)

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        w = self.generator(self.embedding[ids])  # |S| × (out·k·k)
        return w.view(len(ids), self.out_channels, self.kernel_size, self.kernel_size).transpose(0, 1)


class DepthwiseStemConv2d(nn.Module):
    """One filter bank ``W`` (out × 1 × k × k) shared by every channel, applied to each present channel
    separately, then combined with learned per-channel gains ``γ_i`` (out):

        y = (1/|S|) Σ_{i∈S} γ_i ⊙ conv(x_i, W) + b

    Channel identity enters only through ``γ``; the cost equals a plain conv over ``|S|`` channels.
    """

    mode = "depthwise"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, 1, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.gain = nn.Parameter(torch.ones(in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        ids = present_channels(x, channels, self.in_channels, self.mode)
        n, c, h, w = x.shape
        y = F.conv2d(x.reshape(n * c, 1, h, w), self.weight, None, self.stride, self.padding)
        y = y.view(n, c, self.out_channels, *y.shape[-2:])
        y = (y * self.gain[ids].view(1, c, -1, 1, 1)).mean(1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)
