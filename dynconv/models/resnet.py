"""ResNet18/34 from torchvision, with a plain or channel-adaptive stem and a choice of stem preset."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchvision import models as tvm

from ..layers import create_stem
from .base import SubsetModel
from .registry import register_model


class ResNet(SubsetModel):
    """torchvision's ResNet with ``conv1`` from :func:`create_stem`. Parameter names match torchvision's,
    so a plain-stem ``resnet18`` loads torchvision weights and vice versa."""

    def __init__(self, arch: str, num_classes: int, in_chans: int, stem_mode: str | None, stem: str,
                 stem_rescale: bool, norm: str = "shared", switchable_stages: int | None = None,
                 switchable_affine: bool = False, stem_args: dict | None = None, width: int = 64):
        super().__init__()
        self.in_chans, self.arch = in_chans, arch
        tv = getattr(tvm, arch)(weights=None, num_classes=num_classes)
        if width != 64:
            _narrow(tv, width)
        self.conv1 = create_stem(stem_mode, in_chans, width, stem, stem_rescale, stem_args)
        for name in ("bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"):
            setattr(self, name, getattr(tv, name))
        self.channel_adaptive = stem_mode is not None
        self.setup_norm(norm, switchable_stages, switchable_affine)

    def norm_stages(self) -> list[str]:
        return ["bn1", "layer1", "layer2", "layer3", "layer4"]

    def forward_features(self, x: torch.Tensor, channels: Sequence[int] | None = None) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.stem_forward(self.conv1, x, channels))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(features), 1))


def _narrow(tv: tvm.ResNet, width: int) -> None:
    """torchvision's ResNet with ``width`` channels in its first stage (the stages double it; torchvision's
    is 64), rebuilt with its own ``_make_layer`` and initialised as torchvision initialises it."""
    if width < 4:
        raise ValueError(f"width must be at least 4, got {width}")
    block = type(tv.layer1[0])
    depths = [len(getattr(tv, f"layer{i}")) for i in range(1, 5)]
    tv.inplanes, tv.bn1 = width, nn.BatchNorm2d(width)
    for i, n in enumerate(depths):
        setattr(tv, f"layer{i + 1}", tv._make_layer(block, width * 2 ** i, n, stride=1 if i == 0 else 2))
    tv.fc = nn.Linear(width * 8 * block.expansion, tv.fc.out_features)
    for m in tv.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Options shared by every builder: ``width`` (channels of the first stage; 64 is torchvision's ResNet, smaller
# ones make quick experiments and tests cheap), ``norm`` (shared | recalibrate | switchable | group), and for
# ``switchable`` the stages it covers (``switchable_stages``: stem + first k stages; None = all) and whether
# γ/β are per subset (``switchable_affine``).


def _plain(arch: str, num_classes: int, in_chans: int, stem: str, norm: str, switchable_stages: int | None,
           switchable_affine: bool, fill_rescale: bool, width: int) -> nn.Module:
    model = ResNet(arch, num_classes, in_chans, None, stem, False, norm, switchable_stages, switchable_affine,
                   width=width)
    model.fill_rescale = fill_rescale
    return model


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3, stem: str = "torchvision", norm: str = "shared",
             switchable_stages: int | None = None, switchable_affine: bool = False,
             fill_rescale: bool = False, width: int = 64) -> nn.Module:
    """Plain ResNet18: a channel subset is the full input with the absent channels zero-filled (and, with
    ``fill_rescale``, the present ones scaled by C/k)."""
    return _plain("resnet18", num_classes, in_chans, stem, norm, switchable_stages, switchable_affine, fill_rescale,
                  width)


@register_model
def resnet34(num_classes: int = 1000, in_chans: int = 3, stem: str = "torchvision", norm: str = "shared",
             switchable_stages: int | None = None, switchable_affine: bool = False,
             fill_rescale: bool = False, width: int = 64) -> nn.Module:
    return _plain("resnet34", num_classes, in_chans, stem, norm, switchable_stages, switchable_affine, fill_rescale,
                  width)


@register_model
def dynamic_resnet18(num_classes: int = 1000, in_chans: int = 3, stem_mode: str = "prefix",
                     stem: str = "torchvision", stem_rescale: bool = False, norm: str = "shared",
                     switchable_stages: int | None = None, switchable_affine: bool = False,
                     stem_args: dict | None = None, width: int = 64) -> nn.Module:
    """ResNet18 whose first conv accepts any non-empty subset of the ``in_chans`` channels; ``stem_args``:
    the stem mode's own settings (:func:`dynconv.layers.stem_options`)."""
    return ResNet("resnet18", num_classes, in_chans, stem_mode, stem, stem_rescale, norm, switchable_stages,
                  switchable_affine, stem_args, width)


@register_model
def dynamic_resnet34(num_classes: int = 1000, in_chans: int = 3, stem_mode: str = "prefix",
                     stem: str = "torchvision", stem_rescale: bool = False, norm: str = "shared",
                     switchable_stages: int | None = None, switchable_affine: bool = False,
                     stem_args: dict | None = None, width: int = 64) -> nn.Module:
    return ResNet("resnet34", num_classes, in_chans, stem_mode, stem, stem_rescale, norm, switchable_stages,
                  switchable_affine, stem_args, width)
