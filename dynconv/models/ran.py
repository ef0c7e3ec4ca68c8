"""A compact Residual Attention Network (Wang et al., CVPR 2017) with two attention stages, as in the
original study (which cut the usual three stages of Attention-56 to two, after ResidualAttentionNetwork-
pytorch by tengshaofeng)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import create_stem
from .base import SubsetModel
from .registry import register_model


class PreActBottleneck(nn.Module):
    """Pre-activation residual unit: BN-ReLU-1×1, BN-ReLU-3×3(stride), BN-ReLU-1×1, plus a projection
    shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        mid = cout // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(mid), nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class SoftMask(nn.Module):
    """Bottom-up/top-down branch: ``depth`` max-pool halvings, each followed by a residual unit, with a skip
    unit at every level; bilinear upsampling back; then BN-ReLU-1×1-BN-ReLU-1×1-sigmoid."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.down = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth))
        self.skip = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth - 1))
        self.up = nn.ModuleList(PreActBottleneck(channels, channels) for _ in range(depth - 1))
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
                                 nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
                                 nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes, skips = [], []
        for i, unit in enumerate(self.down):
            sizes.append(x.shape[-2:])
            x = unit(F.max_pool2d(x, 3, 2, 1))
            if i < len(self.skip):
                skips.append(self.skip[i](x))
        for i in reversed(range(len(self.down))):
            x = F.interpolate(x, size=sizes[i], mode="bilinear", align_corners=False)
            if i > 0:
                x = self.up[i - 1](x + skips[i - 1])
        return self.out(x)


class AttentionModule(nn.Module):
    """``p`` units, then trunk ``T`` (``t`` units) and soft mask ``M``; output ``(1 + M) · T``; ``p`` units."""

    def __init__(self, channels: int, depth: int, p: int = 1, t: int = 2):
        super().__init__()
        self.pre = nn.Sequential(*(PreActBottleneck(channels, channels) for _ in range(p)))
        self.trunk = nn.Sequential(*(PreActBottleneck(channels, channels) for _ in range(t)))
        self.mask = SoftMask(channels, depth)
        self.post = nn.Sequential(*(PreActBottleneck(channels, channels) for _ in range(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        return self.post((1 + self.mask(x)) * self.trunk(x))


class ResidualAttentionNet(SubsetModel):
    """stem → unit(64→256) → attention (mask depth 3) → unit(256→512, /2) → attention (depth 2)
    → unit(512→1024, /2) → ``tail[0]`` units(1024) → unit(1024→2048, /2) → ``tail[1]`` units → BN-ReLU → pool → fc.

    The defaults (``p=0, t=2, tail=(1, 0)``) were chosen so that at 224×224 and 50 classes the model costs
    3.77 GMACs, 1.4 % above the 3,715,245,312 the study reports for its two-stage RAN (ResNet34: 3.67 G).
    """

    def __init__(self, num_classes: int, in_chans: int, stem_mode: str | None, stem: str, stem_rescale: bool,
                 p: int = 0, t: int = 2, tail: tuple[int, int] = (1, 0), norm: str = "shared",
                 switchable_stages: int | None = None, switchable_affine: bool = False, stem_args: dict | None = None,
                 width: int = 64):
        super().__init__()
        if width < 4:
            raise ValueError(f"width must be at least 4, got {width}")
        w = width  # the stem's channels; the units widen to 4w, 8w, 16w, 32w (64: the study's network)
        self.in_chans = in_chans
        self.conv1 = create_stem(stem_mode, in_chans, w, stem, stem_rescale, stem_args)
        self.bn1 = nn.BatchNorm2d(w)
        self.channel_adaptive = stem_mode is not None
        self.body = nn.Sequential(
            PreActBottleneck(w, 4 * w), AttentionModule(4 * w, 3, p, t),
            PreActBottleneck(4 * w, 8 * w, 2), AttentionModule(8 * w, 2, p, t),
            PreActBottleneck(8 * w, 16 * w, 2), *(PreActBottleneck(16 * w, 16 * w) for _ in range(tail[0])),
            PreActBottleneck(16 * w, 32 * w, 2), *(PreActBottleneck(32 * w, 32 * w) for _ in range(tail[1])),
            nn.BatchNorm2d(32 * w), nn.ReLU(inplace=True))
        self.fc = nn.Linear(32 * w, num_classes)
        self.setup_norm(norm, switchable_stages, switchable_affine)

    def norm_stages(self) -> list[str]:
        return ["bn1"] + [f"body.{i}" for i in range(len(self.body))]

    def forward_features(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.stem_forward(self.conv1, x, channels))), 3, 2, 1)
        return self.body(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))


@register_model
def ran2(num_classes: int = 1000, in_chans: int = 3, stem_mode: str | None = None, stem: str = "torchvision",
         stem_rescale: bool = False, norm: str = "shared", switchable_stages: int | None = None,
         switchable_affine: bool = False, stem_args: dict | None = None, width: int = 64) -> nn.Module:
    """The study's two-stage Residual Attention Network; ``stem_mode`` makes its first conv adaptive."""
    return ResidualAttentionNet(num_classes, in_chans, stem_mode, stem, stem_rescale, norm=norm,
                                switchable_stages=switchable_stages, switchable_affine=switchable_affine,
                                stem_args=stem_args, width=width)
