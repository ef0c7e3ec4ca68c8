"""One compiled pass for loader-side flips of H×W×C uint8 images, optionally normalised through a lookup
table into float32: what FFCV's ``RandomHorizontalFlip`` + ``NormalizeImage`` do in its own pipeline, with
dynconv's per-sample draws (``SampleAugment``) passed in. Parallel over the images with numba, as FFCV's
compiled operations (same threading layer, called from FFCV's loader thread)."""
from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np


@numba.njit(parallel=True, nogil=True, cache=True)
def _flip_lookup(images, hflip, vflip, table, dst):
    n, h, w, c = images.shape
    for k in numba.prange(n):
        for i in range(h):
            si = h - 1 - i if vflip[k] else i
            for j in range(w):
                sj = w - 1 - j if hflip[k] else j
                for ch in range(c):
                    dst[k, i, j, ch] = table[images[k, si, sj, ch], ch]
    return dst


@lru_cache(maxsize=None)
def _identity(channels: int) -> np.ndarray:
    """256 × C uint8 table that maps every value to itself (flips without normalisation)."""
    return np.repeat(np.arange(256, dtype=np.uint8)[:, None], channels, 1)


def flip_images(images: np.ndarray, hflip: np.ndarray, vflip: np.ndarray, dst: np.ndarray,
                lut: np.ndarray | None = None) -> np.ndarray:
    """``dst[k]`` = image ``k`` (N×H×W×C uint8) flipped where ``hflip[k]`` / ``vflip[k]``, through ``lut``
    (256×C float32, value -> normalised value per channel) when given. ``dst`` must not alias ``images``."""
    table = _identity(images.shape[-1]) if lut is None else lut
    return _flip_lookup(images, np.ascontiguousarray(hflip, dtype=np.bool_),
                        np.ascontiguousarray(vflip, dtype=np.bool_), np.ascontiguousarray(table), dst)
