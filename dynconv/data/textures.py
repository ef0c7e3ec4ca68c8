"""A harder synthetic set, with the channel statistics of photos: classes differ in *structure* carried by
the luminance (which band of spatial frequencies, isotropic, oriented or crossed) and in *colour texture*
carried by an opponent-colour field (a coarse or a fine chromatic pattern, as R-B differences), both seen
through 1/f noise with random phases. The three channels are correlated as in natural images (a shared
luminance plus weaker chroma fields, with per-channel means and contrasts of photos).

Class ``k`` of ``n``: structure ``k % (n // 2)`` and colour texture ``k // (n // 2)``. Orientations are
random per image, so every class is invariant to the study's flips and rotations. Every channel shows the
structure, but the colour texture is strong only in the differences between channels: R and B carry it
with opposite signs, G hardly at all — so dropping channels costs accuracy the way it does on photos (a
G-only image is nearly colour-blind), and the per-channel statistics of the subsets differ.
"""
from __future__ import annotations

import math

import numpy as np

# photo-like channel mix of (luminance, opponent R-B, opponent G-RB) and per-channel mean / contrast
_MIX = np.array([[0.85, 0.45, 0.10], [0.95, 0.0, -0.25], [0.80, -0.45, 0.10]])
_MEAN = np.array([0.48, 0.46, 0.41])
_STD = np.array([0.21, 0.20, 0.22])
# luminance structures: (band centre in cycles per pixel, orientation concentration, crossed)
_STRUCTURES = ((0.08, 0.0, False), (0.2, 0.0, False), (0.08, 4.0, False), (0.2, 4.0, False), (0.13, 4.0, True))
_STRUCTURE_NAMES = ("blobs", "speckle", "stripes", "fine-stripes", "grid")
_CHROMA_BANDS = (0.05, 0.3)   # the coarse and the fine colour texture


def class_names(num_classes: int) -> list[str]:
    n = max(1, num_classes // 2)
    return [f"{k:02d}_{_STRUCTURE_NAMES[(k % n) % len(_STRUCTURE_NAMES)]}_{'coarse' if k // n == 0 else 'fine'}colour"
            for k in range(num_classes)]


def _noise(size: int, rng: np.random.Generator, amplitude: np.ndarray) -> np.ndarray:
    """A real field with the given amplitude spectrum and uniformly random phases, zero mean, unit std."""
    phase = np.exp(2j * np.pi * rng.random((size, size)))
    field = np.real(np.fft.ifft2(amplitude * phase))
    return (field - field.mean()) / (field.std() + 1e-8)


def _band(r: np.ndarray, centre: float, octaves: float = 0.45) -> np.ndarray:
    return np.exp(-0.5 * (np.log2(r / centre) / octaves) ** 2)


def render(label: int, size: int, rng: np.random.Generator, num_classes: int = 10) -> np.ndarray:
    """One ``size``×``size``×3 uint8 image of class ``label``."""
    n = max(1, num_classes // 2)
    centre, kappa, crossed = _STRUCTURES[(label % n) % len(_STRUCTURES)]
    chroma_band = _CHROMA_BANDS[min(label // n, len(_CHROMA_BANDS) - 1)]
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    r = np.hypot(fx, fy)
    r[0, 0] = 1.0 / size
    phi = np.arctan2(fy, fx)
    slope = rng.uniform(0.9, 1.3)
    background = (r / 0.13) ** -slope  # 1/f
    theta = rng.uniform(0, math.pi)
    shape = np.exp(kappa * (np.cos(2 * (phi - theta)) - 1))
    if crossed:
        shape = np.maximum(shape, np.exp(kappa * (np.cos(2 * (phi - theta - math.pi / 2)) - 1)))
    centre *= 2 ** rng.normal(0, 0.15)
    luminance = _noise(size, rng, 0.3 * background + rng.uniform(2.5, 3.5) * _band(r, centre) * shape)
    opponent_rb = _noise(size, rng, 0.3 * background + rng.uniform(2.5, 3.5) * _band(r, chroma_band * 2 ** rng.normal(0, 0.15)))
    opponent_g = _noise(size, rng, background)
    channels = np.stack([luminance, opponent_rb, 0.4 * opponent_g])
    rgb = np.tensordot(_MIX, channels, axes=1) / np.linalg.norm(_MIX, axis=1)[:, None, None]
    contrast = rng.uniform(0.7, 1.3)
    img = _MEAN[:, None, None] + contrast * _STD[:, None, None] * rgb + rng.normal(0, 0.02, (3, 1, 1))
    return (np.clip(img, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8)
