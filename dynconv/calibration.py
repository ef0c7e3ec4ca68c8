"""Per-subset BatchNorm re-estimation (``model.norm=recalibrate`` and ``switchable``): on demand, and as a
trainer hook before every validation and the final checkpoint."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from itertools import islice
from typing import Callable, Sequence

from torch import nn
from tqdm.auto import tqdm

from .channel_select import forward_subset
from .channels import Subset
from .data.loaders import DataSource
from .data.mixture import MixturePart
from .layers.subset_norm import calibrate_in_one_pass
from .train.hooks import Algorithm

log = logging.getLogger("dynconv")


def calibrate_from_source(model: nn.Module, source: DataSource, transform: Callable, subsets: list[Subset],
                          num_batches: int, parts: Sequence[MixturePart] = (), progress: bool = False) -> int:
    """Re-estimate every subset's statistics from the first ``num_batches`` batches of ``source`` (epoch 0,
    so the same seed gives the same images; not augmented, also where augmentation runs in the loader);
    returns the number of images used per subset. A mixture (``source`` a :class:`MixtureSource` of
    ``parts``): that many batches of each dataset, and a subset's statistics pool the datasets that have
    all of its channels.

    One pass: each batch is read and transformed once and, while in memory, run once per subset it
    calibrates. ``progress`` (the main process, for a long calibration): a start and an end line on the
    "dynconv" logger and, on a terminal, a progress bar."""
    plan = []  # (source, its transform, the subsets its batches calibrate)
    for part, src in zip(parts or [None], source.sources if parts else [source]):
        have = None if part is None else set(part.positions)
        mine = [s for s in subsets if have is None or set(s) <= have]
        if mine:
            plan.append((src, part.model_transform if part else transform, mine))
    total = sum(_batches_of(src, num_batches) for src, *_ in plan)
    images = [0] * len(plan)
    t0 = time.perf_counter()
    if progress:
        log.info(f"calibrating normalisation statistics: {len(subsets)} subsets, {total} batches"
                 + (f" from {len(plan)} datasets" if parts else ""))
    bar = tqdm(total=total, desc="calibration", unit="batch", leave=False, disable=None if progress else True)

    def batches():
        for i, (src, tf, mine) in enumerate(plan):
            # each batch is done with before the next is drawn: no copy of the loader's buffers
            epoch = src.epoch(0, augment=False, copy=False)
            try:
                for raw, *_ in islice(epoch, num_batches):
                    images[i] += raw.shape[0]
                    yield tf(raw), mine
                    bar.update()
            finally:
                epoch.close()

    try:
        with _small_maps_nchw(model):
            calibrate_in_one_pass(model, batches(), forward_subset)
    finally:
        bar.close()
    n = max(images, default=0)
    if progress:
        log.info(f"calibrated {len(subsets)} subsets from {n} images each ({time.perf_counter() - t0:.1f} s)")
    return n


SMALL_MAP = 16  # pixels (4 x 4): the last stages of a ResNet at 64 px


@contextmanager
def _small_maps_nchw(model: nn.Module):
    """On the CPU, convolutions over small maps in NCHW. Batches come channels-last from the CPU loader, and
    oneDNN's channels-last 3x3 convolution over a few pixels is far slower than NCHW's (ResNet18 at 64 px,
    batch 64, 2 cores: 512 channels at 2 x 2 16.7 vs 4.9 ms, 256 at 4 x 4 4.9 vs 3.6 ms; larger maps are as
    fast or faster channels-last). So those inputs are made NCHW for the calibration's forwards: the same
    statistics (to rounding), a forward about a fifth faster."""
    if next(model.parameters()).device.type != "cpu":
        yield
        return

    def to_nchw(module, args):
        x = args[0]
        if x.dim() == 4 and x.shape[-1] * x.shape[-2] <= SMALL_MAP and not x.is_contiguous():
            return (x.contiguous(), *args[1:])
        return None

    hooks = [m.register_forward_pre_hook(to_nchw) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def _batches_of(source: DataSource, num_batches: int) -> int:
    try:
        return min(num_batches, len(source))
    except TypeError:  # an in-memory source of unknown length
        return num_batches


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

    def _run(self, module: nn.Module, subsets: list[Subset], batches: int, final: bool) -> tuple[int, float]:
        t0 = time.perf_counter()
        n = calibrate_from_source(module, self.source, self.transform, subsets, batches, self.parts,
                                  progress=final and self.is_main)  # the final one is long: it says so
        return n * self.world, time.perf_counter() - t0

    def before_validation(self, module: nn.Module, epoch: int) -> dict[str, float]:
        last = epoch == self.epochs
        subsets, batches = (self.all, self.final_batches) if last else (self.per_epoch, self.epoch_batches)
        n, seconds = self._run(module, subsets, batches, final=last)
        self.final_done = last
        return {"calibration_time_s": seconds, "calibration_images": float(n)}

    def before_final(self, module: nn.Module) -> None:
        if self.final_done:  # the last epoch's validation calibrated these very weights already
            return
        self._run(module, self.all, self.final_batches, final=True)
