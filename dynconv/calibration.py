"""Per-subset BatchNorm re-estimation for a trained model (``model.norm=recalibrate``)."""
from __future__ import annotations

from itertools import islice
from typing import Callable

import torch
from torch import nn

from .channel_select import forward_subset
from .channels import Subset
from .data.loaders import DataSource
from .layers.subset_norm import calibrate


def calibrate_from_source(model: nn.Module, source: DataSource, transform: Callable, subsets: list[Subset],
                          num_batches: int) -> int:
    """Re-estimate every subset's statistics from the first ``num_batches`` batches of ``source`` (epoch 0,
    so the same seed gives the same images; not augmented, also where augmentation runs in the loader);
    returns the number of images used per subset."""
    batches = [images for images, _ in islice(source.epoch(0, augment=False), num_batches)]
    with torch.no_grad():
        inputs = [transform(b) for b in batches]
    calibrate(model, lambda subset: inputs, subsets, forward_subset)
    return sum(b.shape[0] for b in batches)
