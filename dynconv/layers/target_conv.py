"""``TargetConv2d``: one ordinary first convolution per channel subset, the non-shared baseline (CHAMMI's
TargetParam, Chen et al., NeurIPS 2023, which keeps one first layer per dataset's channel set)."""
from __future__ import annotations

import torch
from torch import nn

from ..channel_select import take
from ..channels import all_subsets
from .generated_conv import _GeneratedConv


class TargetConv2d(_GeneratedConv):
    """For every non-empty subset ``S`` of the ``C = in_channels`` channels its own weight ``W_S``
    (out × |S| × k × k, Kaiming-initialised like a plain first conv):

        y = conv(x, W_S) + b          (S: the channels present, in the order ``x`` holds them)

    Nothing is shared between subsets — the opposite end from ``slice`` (one weight, sliced): it costs
    ``Σ_S |S| = C · 2^(C-1)`` channels' worth of filters (12 for RGB against 3) and a subset never drawn in
    training keeps its initial filters. Parameters are ``weights.<i>`` in :func:`dynconv.channels.all_subsets`
    order."""

    mode = "target"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias)
        self.subsets = all_subsets(in_channels)
        self.weights = nn.ParameterList(
            nn.Parameter(nn.init.kaiming_normal_(torch.empty(out_channels, len(s), kernel_size, kernel_size),
                                                 mode="fan_out", nonlinearity="relu"))
            for s in self.subsets)

    def channel_filters(self, ids: list[int]) -> torch.Tensor:
        """``W_S`` with its input columns in the order of ``ids``."""
        ordered = tuple(sorted(ids))
        w = self.weights[self.subsets.index(ordered)]
        return w if list(ids) == list(ordered) else take(w, 1, [ordered.index(i) for i in ids])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, one weight per subset ({len(self.subsets)})"
