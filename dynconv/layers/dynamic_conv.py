"""``DynamicConv2D``: a convolution that accepts any number of input channels up to ``in_channels``."""
from __future__ import annotations

import torch
from torch import nn


class DynamicConv2D(nn.Conv2d):
    """Conv2d whose weight holds ``C_max = in_channels`` input channels and whose forward uses only
    the channels present, with the original study's *prefix* semantics:

        y = conv(x, W[:, :c_in]) + b,   c_in = x.shape[1] <= C_max   (no rescaling)

    so a 1-channel input always uses the first channel's filters, whichever channel it came from.
    Weight slices of absent channels take no part in the forward pass and receive no gradient.
    It subclasses ``nn.Conv2d`` and keeps the ``weight``/``bias`` keys, so plain conv checkpoints load.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = x.shape[1]
        if not 0 < c_in <= self.in_channels:
            raise ValueError(
                f"DynamicConv2D got {c_in} input channels; it accepts 1..{self.in_channels}"
            )
        weight = self.weight if c_in == self.in_channels else self.weight[:, :c_in]
        return self._conv_forward(x, weight, self.bias)
