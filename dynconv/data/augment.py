"""Training augmentations of the original study: horizontal/vertical flips, rotation and perspective.

Flips are exact index reversals; rotation and perspective distortion are composed into one projective
map per sample and applied with one bilinear resampling (zeros outside the image). Where they run is a
config choice (``data.augment.where``):

* ``device`` — :class:`BatchTransform` applies them to whole float batches on the training device with
  one ``grid_sample`` call; the draws depend on (seed, epoch, step).
* ``loader`` — :class:`SampleAugment` applies them to uint8 images inside the data loader on the CPU
  (FFCV: an operation in its image pipeline, see ``ffcv_io.py``; torchvision: a per-sample transform in
  the workers); the draws depend on (seed, epoch, sample index) only, so they do not change with the
  batch size, the worker count or the number of data-parallel processes.

Both draw every random number through :func:`from_uniforms`, so probabilities and ranges mean the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..channels import num_channels
from ..fields import param

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentParams:
    """The study's augmentations; the ``data.augment`` config section is derived from these fields."""

    hflip: float = param(0.5, "probability of a horizontal flip", ge=0, le=1)
    vflip: float = param(0.5, "probability of a vertical flip", ge=0, le=1)
    rotation: float = param(15.0, "rotation angle drawn from U(-rotation, +rotation) degrees", ge=0, le=180)
    perspective: float = param(0.2, "distortion scale: corners move inward by up to this fraction of half a side",
                               ge=0, le=1)
    perspective_p: float = param(0.5, "probability of a perspective distortion", ge=0, le=1)

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

    def full_maps(self) -> torch.Tensor | None:
        """``maps`` with the flips folded in (``None`` when there is no rotation/perspective)."""
        if self.maps is None:
            return None
        ones = torch.ones(len(self.hflip), dtype=torch.float64)
        flips = torch.stack([1.0 - 2.0 * self.hflip.double(), 1.0 - 2.0 * self.vflip.double(), ones], 1)
        return self.maps @ torch.diag_embed(flips)


UNIFORMS = 12  # random numbers per sample: hflip, vflip, angle, perspective on/off, 4 corners × (x, y)


def sample(n: int, p: AugmentParams, generator: torch.Generator) -> Draw:
    """Draw augmentation parameters for ``n`` samples (on the CPU, from ``generator`` only)."""
    return from_uniforms(torch.rand(n, UNIFORMS, generator=generator, dtype=torch.float64), p)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(seed: int, epoch: int, indices) -> torch.Tensor:
    """U[0, 1) numbers (float64, ``len(indices)`` × ``UNIFORMS``) that are a pure function of (seed, epoch,
    sample index): a counter-based hash, so any worker, thread or process draws the same for a sample."""
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed & _U64], dtype=np.uint64) + _GOLDEN)
        key = _mix64(key ^ (np.array([epoch & _U64], dtype=np.uint64) + _GOLDEN) * _GOLDEN)
        z = _mix64(key ^ _mix64((idx + np.uint64(1)) * _GOLDEN))
        z = _mix64(z + np.arange(1, UNIFORMS + 1, dtype=np.uint64) * _GOLDEN)
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53)


def from_uniforms(u: torch.Tensor, p: AugmentParams) -> Draw:
    """Per-sample choices from U[0, 1) numbers ``u`` (n × ``UNIFORMS``, float64)."""
    n = u.shape[0]
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
        return warp(images, draw.full_maps())
    dev = images.device
    images = torch.where(draw.hflip.to(dev).view(-1, 1, 1, 1), images.flip(-1), images)
    return torch.where(draw.vflip.to(dev).view(-1, 1, 1, 1), images.flip(-2), images)


def pixel_maps(maps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Output → input maps in [-1, 1] coordinates (``grid_sample``, align_corners=False) as maps between
    pixel coordinates (pixel centres at integers, as OpenCV): ``D · maps · D⁻¹``."""
    d = torch.tensor([[w / 2, 0, (w - 1) / 2], [0, h / 2, (h - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    return d @ maps @ torch.linalg.inv(d)


@dataclass(frozen=True)
class SampleAugment:
    """Loader-side augmentation of uint8 images: draws from (seed, epoch, sample index), same semantics as
    the device side (exact flips; otherwise one bilinear resampling on raw pixels, zeros outside), the
    result rounded back to uint8. ``__call__`` is the torch implementation (torchvision workers); FFCV's
    pipeline uses the same draws with OpenCV (``ffcv_io.LoaderAugment``)."""

    params: AugmentParams
    seed: int = 0

    def draw(self, epoch: int, indices) -> Draw:
        return from_uniforms(sample_uniforms(self.seed, epoch, indices), self.params)

    def __call__(self, images: torch.Tensor, epoch: int, indices) -> torch.Tensor:
        """uint8 NCHW ``images`` of samples ``indices`` → augmented uint8 NCHW."""
        draw = self.draw(epoch, indices)
        if draw.maps is None:
            return apply(images, draw)
        return apply(images.float(), draw).round_().clamp_(0, 255).to(torch.uint8)


def normalization_table(mean, std) -> np.ndarray:
    """256 × C float32: what :class:`BatchTransform` makes of each uint8 value in each channel — the lookup
    table of FFCV's ``NormalizeImage`` when the pipeline normalises, so both give bit-identical batches."""
    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 256, 1).expand(1, len(mean), 256, 1)
    return BatchTransform(mean, std, torch.device("cpu"))(levels.contiguous())[0, :, :, 0].T.contiguous().numpy()


class BatchTransform:
    """uint8 batch → augmented (training only), normalised float batch on ``device``. A floating-point batch
    comes normalised from its source (``DataSource.normalized``) and is only moved to ``device``."""

    def __init__(self, mean, std, device: torch.device, augment: AugmentParams | None = None, seed: int = 0):
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # (x/255 - mean)/std == x·scale - shift, one fused pass
        self.shift = torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t
        self.device, self.augment, self.seed = device, augment, seed

    def __call__(self, images: torch.Tensor, epoch: int = 0, step: int = 0) -> torch.Tensor:
        augment = self.augment is not None and not self.augment.is_identity
        if images.is_floating_point():
            if augment:  # the warp's outside would be 0 in normalised units, not black
                raise ValueError("device-side augmentation needs uint8 batches: build the source without normalize")
            return images.to(self.device, non_blocking=True)
        x = images.to(self.device, non_blocking=True).float()
        if augment:
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch, step]).generate_state(1)[0]))
            x = apply(x, sample(x.shape[0], self.augment, gen))  # on raw pixels: outside = black, as torchvision
        return torch.addcmul(-self.shift, x, self.scale)


def default_stats(channels: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics for RGB data, neutral ones (0.5, 0.25) for other channel sets."""
    if channels == "RGB":
        return IMAGENET_MEAN, IMAGENET_STD
    n = num_channels(channels)
    return (0.5,) * n, (0.25,) * n
