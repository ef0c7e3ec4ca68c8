"""Training augmentations of the original study, as batched tensor ops on the training device.

Flips are exact index reversals; rotation and perspective distortion are composed into one projective
map per sample and applied with a single ``grid_sample`` call. Both run on whole batches on the
training device, whatever the loader (FFCV or torchvision), so the two loader paths share them exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentParams:
    hflip: float = 0.5          # probability of a horizontal flip
    vflip: float = 0.5          # probability of a vertical flip
    rotation: float = 15.0      # rotation angle drawn from U(-rotation, +rotation) degrees
    perspective: float = 0.2    # distortion scale: corners move inward by up to this fraction of half a side
    perspective_p: float = 0.5  # probability of a perspective distortion

    @property
    def is_identity(self) -> bool:
        return not (self.hflip or self.vflip or self.rotation or (self.perspective and self.perspective_p))


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Batched 3×3 maps H with H·src_i ~ dst_i for 4 point pairs (src, dst: B×4×2)."""
    b = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], 1)
    rhs = torch.cat([u, v], 1).unsqueeze(-1)
    h = torch.linalg.solve(a, rhs).squeeze(-1)
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype, device=h.device)], 1).view(b, 3, 3)


@dataclass
class Draw:
    """Per-sample random choices for one batch: flips (applied exactly, by index reversal) and a projective
    map for rotation + perspective (applied by one bilinear resampling, skipped when all are identity)."""

    hflip: torch.Tensor  # bool[n]
    vflip: torch.Tensor  # bool[n]
    maps: torch.Tensor | None  # float64[n, 3, 3], output -> input coordinates in [-1, 1]


def sample(n: int, p: AugmentParams, generator: torch.Generator) -> Draw:
    """Draw augmentation parameters for ``n`` samples (on the CPU, from ``generator`` only)."""
    u = torch.rand(n, 12, generator=generator, dtype=torch.float64)
    maps = None
    if p.rotation or (p.perspective and p.perspective_p):
        theta = (u[:, 2] * 2 - 1) * math.radians(p.rotation)
        c, s = torch.cos(theta), torch.sin(theta)
        maps = torch.zeros(n, 3, 3, dtype=torch.float64)
        maps[:, 0, 0], maps[:, 0, 1], maps[:, 1, 0], maps[:, 1, 1], maps[:, 2, 2] = c, -s, s, c, 1.0
        if p.perspective and p.perspective_p:
            corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
            inward = -corners.expand(n, 4, 2) * u[:, 4:12].view(n, 4, 2) * p.perspective
            apply = (u[:, 3] < p.perspective_p).view(n, 1, 1)
            maps = _homography(corners.expand(n, 4, 2), corners + inward * apply) @ maps
    return Draw(u[:, 0] < p.hflip, u[:, 1] < p.vflip, maps)


def warp(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Resample float NCHW ``images`` through per-sample maps (output → input coords); zeros outside."""
    n, _, h, w = images.shape
    ys = (torch.arange(h, device=images.device, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=images.device, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx.flatten(), gy.flatten(), torch.ones_like(gx.flatten())])  # 3 × HW, shared
    src = maps.to(images.device, torch.float32) @ pts  # N × 3 × HW: one GEMM per sample
    grid = (src[:, :2] / src[:, 2:]).transpose(1, 2).reshape(n, h, w, 2).to(images.dtype)
    return F.grid_sample(images.contiguous(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def apply(images: torch.Tensor, draw: Draw) -> torch.Tensor:
    """Flip, rotate and distort a float NCHW batch on any device. Without rotation/perspective the flips
    are exact index reversals; with them, the flips are folded into the one resampling map."""
    if draw.maps is not None:
        flips = torch.diag_embed(torch.stack([1.0 - 2.0 * draw.hflip.double(), 1.0 - 2.0 * draw.vflip.double(),
                                              torch.ones(len(draw.hflip), dtype=torch.float64)], 1))
        return warp(images, draw.maps @ flips)
    dev = images.device
    images = torch.where(draw.hflip.to(dev).view(-1, 1, 1, 1), images.flip(-1), images)
    return torch.where(draw.vflip.to(dev).view(-1, 1, 1, 1), images.flip(-2), images)


class BatchTransform:
    """uint8 batch → augmented (training only), normalised float batch on ``device``."""

    def __init__(self, mean, std, device: torch.device, augment: AugmentParams | None = None, seed: int = 0):
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # (x/255 - mean)/std == x·scale - shift, one fused pass
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t
        self.device, self.augment, self.seed = device, augment, seed

    def __call__(self, images: torch.Tensor, epoch: int = 0, step: int = 0) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float()
        if self.augment is not None and not self.augment.is_identity:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, step]).generate_state(1)[0]))
            x = apply(x, sample(x.shape[0], self.augment, gen))  # on raw pixels: outside = black, as torchvision
        return torch.addcmul(-self.shift, x, self.scale)


def default_stats(channels: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB data, neutral ones (0.5, 0.25) for other channel sets."""
    if channels == "RGB":
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * len(channels), (0.25,) * len(channels)
