"""Channel-dropout schedules: pure functions of (seed, epoch, step) -> kept channel indices.

Because the choice depends only on those three numbers, a resumed run reproduces it, and every DDP
rank picks the same subset for the same step.
"""
from __future__ import annotations

import numpy as np

from .channels import Subset, all_subsets
from .errors import DynconvError

SCHEDULES = ("none", "uniform_subsets")


class ChannelDropout:
    """``none`` keeps every channel; ``uniform_subsets`` (the study's) draws uniformly among the
    ``2**C - 1`` non-empty subsets for each batch."""

    def __init__(self, kind: str, num_channels: int, seed: int = 0):
        if kind not in SCHEDULES:
            raise DynconvError(f"unknown channel-dropout schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
        self.kind, self.seed = kind, seed
        self.full: Subset = tuple(range(num_channels))
        self.subsets = all_subsets(num_channels)

    def __call__(self, epoch: int, step: int) -> Subset:
        if self.kind == "none":
            return self.full
        rng = np.random.default_rng([self.seed, epoch, step])
        return self.subsets[int(rng.integers(len(self.subsets)))]
