"""The interface every dynconv model implements."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SubsetModel(nn.Module):
    """``forward(x, channels=None)``: ``x`` holds only the present channels, ``channels`` names them
    (indices into the dataset's channels). Models with a plain stem ignore ``channels`` and expect every
    channel (absent ones zero-filled); ``channel_adaptive`` says which kind a model is."""

    channel_adaptive: bool = False

    def stem_forward(self, stem: nn.Module, x: torch.Tensor, channels: Sequence[int] | None) -> torch.Tensor:
        return stem(x, channels) if self.channel_adaptive else stem(x)

    def forward_features(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, channels))
