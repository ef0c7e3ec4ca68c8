"""Per-subset BatchNorm re-estimation (``model.norm=recalibrate`` and ``switchable``): on demand, and as a
trainer hook before every validation and the final checkpoint."""
from __future__ import annotations

import logging
import time
from itertools import islice
from typing import Callable, Sequence

import torch
from torch import nn

from .channel_select import forward_subset
from .channels import Subset
from .data.loaders import DataSource
from .data.mixture import MixturePart
from .layers.subset_norm import calibrate
from .train.hooks import Algorithm

log = logging.getLogger("dynconv")


def calibrate_from_source(model: nn.Module, source: DataSource, transform: Callable, subsets: list[Subset],
                          num_batches: int, parts: Sequence[MixturePart] = ()) -> int:
    """Re-estimate every subset's statistics from the first ``num_batches`` batches of ``source`` (epoch 0,
    so the same seed gives the same images; not augmented, also where augmentation runs in the loader);
    returns the number of images used per subset. A mixture (``source`` a :class:`MixtureSource` of
    ``parts``): that many batches of each dataset, and a subset's statistics pool the datasets that have
    all of its channels."""
    sources = source.sources if parts else [source]
    pools = []
    for part, src in zip(parts or [None], sources):
        batches = [images for images, *_ in islice(src.epoch(0, augment=False), num_batches)]
        with torch.no_grad():
            inputs = [(part.model_transform if part else transform)(b) for b in batches]
        pools.append((set(part.positions) if part else None, inputs, sum(b.shape[0] for b in batches)))
    calibrate(model, lambda subset: [x for have, xs, _ in pools if have is None or set(subset) <= have for x in xs],
              subsets, forward_subset)
    return max(n for *_, n in pools)


class Calibrate(Algorithm):
    """Per-subset normalisation statistics measured on the weights being evaluated (``model.norm=recalibrate``
    or ``switchable``), so every validation scores the model as it will be evaluated and shipped.

    Before each epoch's validation the subsets that validation scores (``epoch_subsets``) are calibrated
    from ``epoch_batches`` training batches (cheap); before the last epoch's validation every subset is
    calibrated from ``final_batches``, exactly as the final checkpoint is, so the last epoch's logged
    per-subset accuracies equal the final evaluation's. Every process takes part (statistics are summed over
    the data-parallel processes); the time spent is reported as ``calibration_time_s``."""

    def __init__(self, source: DataSource, transform: Callable, all_subsets: list[Subset],
                 epoch_subsets: list[Subset], epoch_batches: int, final_batches: int, epochs: int,
                 world: int = 1, is_main: bool = True, parts: Sequence[MixturePart] = ()):
        self.source, self.transform, self.all, self.per_epoch = source, transform, list(all_subsets), list(epoch_subsets)
        self.parts = parts
        self.epoch_batches, self.final_batches, self.epochs = epoch_batches, final_batches, epochs
        self.world, self.is_main = world, is_main
        self.final_done = False

    def _run(self, module: nn.Module, subsets: list[Subset], batches: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        n = calibrate_from_source(module, self.source, self.transform, subsets, batches, self.parts)
        return n * self.world, time.perf_counter() - t0

    def before_validation(self, module: nn.Module, epoch: int) -> dict[str, float]:
        last = epoch == self.epochs
        subsets, batches = (self.all, self.final_batches) if last else (self.per_epoch, self.epoch_batches)
        n, seconds = self._run(module, subsets, batches)
        self.final_done = last
        return {"calibration_time_s": seconds, "calibration_images": float(n)}

    def before_final(self, module: nn.Module) -> None:
        if self.final_done:  # the last epoch's validation calibrated these very weights already
            return
        n, seconds = self._run(module, self.all, self.final_batches)
        if self.is_main:
            log.info(f"calibrated normalisation statistics for {len(self.all)} subsets from {n} training images "
                     f"each ({seconds:.1f} s)")
