"""The interface every dynconv model implements."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..channels import all_subsets
from ..choices import NORM_MODES, check_choice
from ..errors import DynconvError
from ..layers.subset_norm import convert_norm, subset_norms


class SubsetModel(nn.Module):
    """``forward(x, channels=None)``: ``channels`` names the channels present (indices into the dataset's
    ``in_chans`` channels; default: all). A channel-adaptive model (``channel_adaptive``) receives only
    those channels in ``x``; a plain one receives every channel, absent ones zero-filled. Either way,
    subset-aware normalisation layers are switched to the statistics of that subset."""

    channel_adaptive: bool = False
    in_chans: int = 3

    def norm_stages(self) -> list[str]:
        """Module-name prefixes of the stem's norm and then each stage, in forward order."""
        raise NotImplementedError

    def setup_norm(self, norm: str, switchable_stages: int | None = None, switchable_affine: bool = False) -> None:
        check_choice(norm, NORM_MODES, "norm")
        prefixes = None
        if norm == "switchable" and switchable_stages is not None:
            stages = self.norm_stages()
            if not 0 <= switchable_stages < len(stages):
                raise DynconvError(f"model.switchable_stages must be 0..{len(stages) - 1} for this model")
            prefixes = stages[: switchable_stages + 1]  # the stem's norm and the first k stages
        convert_norm(self, norm, self.in_chans, prefixes, switchable_affine)
        self._norms = subset_norms(self)
        self._subsets = all_subsets(self.in_chans)

    def set_active_subset(self, channels: Sequence[int] | None) -> None:
        norms = getattr(self, "_norms", None)
        if norms:
            k = self._subsets.index(tuple(range(self.in_chans)) if channels is None else tuple(sorted(channels)))
            for m in norms:
                m.active = k

    def stem_forward(self, stem: nn.Module, x: torch.Tensor, channels: Sequence[int] | None) -> torch.Tensor:
        return stem(x, channels) if self.channel_adaptive else stem(x)

    def forward_features(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        self.set_active_subset(channels)
        return self.forward_head(self.forward_features(x, channels))
