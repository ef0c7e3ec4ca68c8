"""Stems whose per-channel filters are *built* rather than stored — template mixing, a hypernetwork — and a
depthwise stem: three of the channel-adaptive strategies benchmarked by CHAMMI (Chen et al., NeurIPS 2023),
following its reference code (github.com/chaudatascience/channel_adaptive_models) where each docstring says."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..channel_select import take
from ..choices import DEPTHWISE_COMBINE
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


def kaiming_std(out_channels: int, kernel_size: int) -> float:
    """The standard deviation of a plain stem's filters (``kaiming_normal_``, fan_out, ReLU), which the
    generated stems start at unless ``init_std`` says otherwise."""
    return math.sqrt(2.0 / (out_channels * kernel_size * kernel_size))


def _positive(name: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


class TemplateMixingConv2d(_GeneratedConv):
    """CHAMMI's template mixing: per-channel filters mixed from ``T`` shared templates ``T_t`` (out × k × k):

        W[:, i] = Σ_t α[i, t] · T_t,      y = conv(x, W[:, S]) + b

    Channels share structure through the templates and differ only by their coefficients ``α[i]``. As in
    the reference, ``num_templates`` defaults to 16 and ``α`` starts orthogonal (orthonormal rows for
    C ≤ T, so every starting filter has the templates' scale); the templates start at ``init_std``
    (default: a plain stem's Kaiming scale; the reference uses Kaiming over the bank's T·k·k fan-in).
    """

    mode = "template_mixing"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, num_templates: int = 16, init_std: float | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        _positive("num_templates", num_templates)
        std = kaiming_std(out_channels, kernel_size) if init_std is None else float(init_std)
        _positive("init_std", std, float)
        self.num_templates = num_templates
        self.templates = nn.Parameter(torch.randn(num_templates, out_channels, kernel_size, kernel_size) * std)
        self.mix = nn.Parameter(nn.init.orthogonal_(torch.empty(in_channels, num_templates)))

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        return torch.einsum("ct,tohw->ochw", take(self.mix, 0, ids), self.templates)


class HyperNetConv2d(_GeneratedConv):
    """CHAMMI's hypernetwork: per-channel filters generated, linearly, from a learned channel embedding
    ``e_i`` (``embed_dim``, 128 in the reference) through a hidden layer (``hidden``, 256):

        W[:, i] = reshape(B (A e_i + a) + b) to out × k × k,      y = conv(x, W[:, S])

    No activation between the two layers, as in the reference. The embeddings start as N(0, 1); ``B`` is
    scaled once at construction so the starting filters have ``init_std`` (default: a plain stem's
    Kaiming scale) — the reference's own start (Kaiming ``A``/``B``, N(0, 1) biases) gives filters orders of
    magnitude larger than a plain conv's."""

    mode = "hypernet"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, embed_dim: int = 128, hidden: int = 256,
                 init_std: float | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        _positive("embed_dim", embed_dim)
        _positive("hidden", hidden)
        std = kaiming_std(out_channels, kernel_size) if init_std is None else float(init_std)
        _positive("init_std", std, float)
        self.embedding = nn.Parameter(torch.randn(in_channels, embed_dim))
        self.hidden = nn.Linear(embed_dim, hidden)
        self.out = nn.Linear(hidden, out_channels * kernel_size * kernel_size)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.out.weight.mul_(std / self.out(self.hidden(self.embedding)).std())

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        w = self.out(self.hidden(take(self.embedding, 0, ids)))  # |S| × (out·k·k)
        return w.view(len(ids), self.out_channels, self.kernel_size, self.kernel_size).transpose(0, 1)



class DepthwiseStemConv2d(nn.Module):
    """CHAMMI's depthwise stem: a bank of ``K`` filters per channel (``kernels_per_channel``, 64 in the
    reference) applied to that channel alone, the present channels' responses combined, then a 1×1
    convolution to ``out`` and an affine instance norm:

        z_i = conv(x_i, D_i)   (K × 1 × k × k, the stem's geometry)
        u   = Σ_{i∈S} w_i z_i  with  w = softmax(β_S)  (``combine=softmax``, the reference's
              weighted_sum_random; ``weighted``: w = β_S; ``mean``: 1/|S|; ``sum``: 1)
        y   = InstanceNorm(P u),  P: K → out, 1×1

    The reference (ConvNeXt) patchifies each channel 4×4/4 and then applies a 3×3 bank; here the bank itself
    has the stem preset's kernel and stride. ``D`` starts at Kaiming (fan_in, as the reference), ``β`` as
    N(0, 1) (``weighted``: ones). Per-channel parameters: ``D_i`` and ``β_i``. The instance norm makes the
    output's scale independent of the combination and of |S|."""

    mode = "depthwise"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False, kernels_per_channel: int = 64, combine: str = "softmax"):
        super().__init__()
        _positive("kernels_per_channel", kernels_per_channel)
        if combine not in DEPTHWISE_COMBINE:
            raise ValueError(f"combine must be one of {', '.join(DEPTHWISE_COMBINE)}, got {combine!r}")
        self.in_channels, self.out_channels, self.kernels = in_channels, out_channels, kernels_per_channel
        self.stride, self.padding, self.combine = stride, padding, combine
        self.bank = nn.Parameter(torch.empty(in_channels, kernels_per_channel, 1, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.bank.view(-1, 1, kernel_size, kernel_size), mode="fan_in", nonlinearity="relu")
        if combine in ("softmax", "weighted"):
            self.channel_weight = nn.Parameter(torch.ones(in_channels) if combine == "weighted" else torch.randn(in_channels))
        self.project = nn.Conv2d(kernels_per_channel, out_channels, 1, bias=bias)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True)

    def channel_weights(self, ids: list[int]) -> torch.Tensor:
        if self.combine == "softmax":
            return torch.softmax(take(self.channel_weight, 0, ids), 0)
        if self.combine == "weighted":
            return take(self.channel_weight, 0, ids)
        return self.bank.new_full((len(ids),), 1.0 / len(ids) if self.combine == "mean" else 1.0)

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        ids = present_channels(x, channels, self.in_channels, self.mode)
        n, c = x.shape[:2]
        bank = take(self.bank, 0, ids).reshape(c * self.kernels, 1, *self.bank.shape[-2:])
        z = F.conv2d(x, bank, None, self.stride, self.padding, groups=c)
        z = z.view(n, c, self.kernels, *z.shape[-2:])
        u = (z * self.channel_weights(ids).view(1, c, 1, 1, 1)).sum(1)
        return self.norm(self.project(u))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernels_per_channel={self.kernels}, "
                f"combine={self.combine}, stride={self.stride}, padding={self.padding}")
