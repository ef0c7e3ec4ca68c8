"""``DynamicConv2D``: a convolution that accepts any subset of its ``in_channels`` input channels."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..channel_select import take
from ..choices import SLICED_STEMS


def present_channels(x: torch.Tensor, channels: Sequence[int] | None, c_max: int, mode: str) -> list[int]:
    """Indices (into the layer's ``c_max`` channels) of the channels in ``x``.

    ``prefix`` ignores channel identity (the study: the first ``c_in`` weight columns); every other mode
    uses ``channels`` when given, else assumes the first ``c_in`` channels are present.
    """
    c_in = x.shape[1]
    if not 0 < c_in <= c_max:
        raise ValueError(f"{mode} stem got {c_in} input channels; it accepts 1..{c_max}")
    if mode == "prefix" or channels is None:
        return list(range(c_in))
    ids = list(channels)
    if len(ids) != c_in or len(set(ids)) != c_in or not all(0 <= i < c_max for i in ids):
        raise ValueError(f"channel ids {ids} do not describe the {c_in} input channels (of {c_max})")
    return ids


class DynamicConv2D(nn.Conv2d):
    """Conv2d whose weight ``W`` holds ``C = in_channels`` input channels; forward uses only those present.

    * ``mode="prefix"`` (the original study): ``y = conv(x, W[:, :c]) + b`` for a ``c``-channel input —
      a G-only image uses R's filters.
    * ``mode="slice"``: the caller names the present channels ``S`` (``forward(x, channels=S)``) and
      ``y = s · conv(x, W[:, S]) + b`` with ``s = C / |S|`` when ``rescale`` else 1, so activations keep
      their scale as channels disappear.

    Absent channels' weight slices take no part in the forward pass and receive no gradient.
    Subclasses ``nn.Conv2d`` and keeps its ``weight``/``bias`` keys, so plain conv checkpoints load.
    """

    def __init__(self, *args, mode: str = "prefix", rescale: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in SLICED_STEMS:
            raise ValueError(f"DynamicConv2D mode must be one of {', '.join(SLICED_STEMS)}, not {mode!r}")
        self.mode, self.rescale = mode, rescale

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        ids = present_channels(x, channels, self.in_channels, self.mode)
        if ids == list(range(self.in_channels)):
            weight = self.weight
        elif ids == list(range(len(ids))):
            weight = self.weight[:, : len(ids)]
        else:
            weight = take(self.weight, 1, ids)
        if self.rescale and len(ids) != self.in_channels:
            weight = weight * (self.in_channels / len(ids))
        if weight is not self.weight and self.weight.is_contiguous(memory_format=torch.channels_last) \
                and not self.weight.is_contiguous():
            # a slice or gather of a channels_last weight is not channels_last itself (a view with gaps, or NCHW):
            # given as it is, the convolution converts it, and may choose slower kernels (the model is channels_last)
            weight = weight.contiguous(memory_format=torch.channels_last)
        return self._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode}, rescale={self.rescale}"
