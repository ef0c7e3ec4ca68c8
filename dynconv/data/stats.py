"""Per-channel mean and std of a training set, for ``data.mean=auto``/``data.std=auto``: ``dynconv convert``
stores them in the ``.beton``'s sidecar; for an image folder they are computed when training starts. Both
from at most a bounded number of evenly spaced images (the loader's pixels, scaled to 0..1)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DynconvError
from .folder import load_sample, scan_image_folder, square_resize

BETON_SAMPLES = 10_000   # images `dynconv convert` reads back for the statistics
FOLDER_SAMPLES = 2_000   # images an image folder is sampled with at the start of training


def sample_indices(n: int, limit: int) -> list[int]:
    """At most ``limit`` evenly spaced indices of ``range(n)`` (all of them when ``n <= limit``)."""
    if n <= limit:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))


def channel_stats(n: int, load_chw: Callable[[int], np.ndarray], limit: int) -> tuple[list[float], list[float]]:
    """(mean, std) per channel over every pixel of the sampled images; ``load_chw(i)`` gives image ``i`` as
    uint8 C×H×W. Accumulated in float64, so the result does not depend on the order of the images."""
    total = total_sq = 0.0
    count = 0
    for i in sample_indices(n, limit):
        x = np.asarray(load_chw(i), dtype=np.float64)
        x = x.reshape(x.shape[0], -1) / 255.0
        total, total_sq, count = total + x.sum(1), total_sq + np.square(x).sum(1), count + x.shape[1]
    if not count:
        raise DynconvError("no images to compute data.mean/std=auto from")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    if (std == 0).any():
        raise DynconvError(f"channel(s) {np.flatnonzero(std == 0).tolist()} are constant in the training images: "
                           "set data.mean and data.std explicitly")
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def folder_stats(root: str | Path, size: int, limit: int = FOLDER_SAMPLES) -> tuple[list[float], list[float]]:
    """The statistics of an image folder's pixels as the folder loader produces them at ``size``."""
    index = scan_image_folder(root)
    return channel_stats(len(index.samples),
                         lambda i: square_resize(load_sample(index.samples[i][0]), size).numpy(), limit)

