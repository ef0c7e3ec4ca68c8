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
                 switchable_affine: bool = False, stem_args: dict | None = None):
        super().__init__()
        self.in_chans = in_chans
        tv = getattr(tvm, arch)(weights=None, num_classes=num_classes)
        self.conv1 = create_stem(stem_mode, in_chans, 64, stem, stem_rescale, stem_args)
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


# Options shared by every builder: ``norm`` (shared | recalibrate | switchable | group), and for
# ``switchable`` the stages it covers (``switchable_stages``: stem + first k stages; None = all) and whether
# γ/β are per subset (``switchable_affine``).


def _plain(arch: str, num_classes: int, in_chans: int, stem: str, norm: str, switchable_stages: int | None,
           switchable_affine: bool, fill_rescale: bool) -> nn.Module:
    model = ResNet(arch, num_classes, in_chans, None, stem, False, norm, switchable_stages, switchable_affine)
    model.fill_rescale = fill_rescale
    return model


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3, stem: str = "torchvision", norm: str = "shared",
             switchable_stages: int | None = None, switchable_affine: bool = False,
             fill_rescale: bool = False) -> nn.Module:
    """Plain ResNet18: a channel subset is the full input with the absent channels zero-filled (and, with
    ``fill_rescale``, the present ones scaled by C/k)."""
    return _plain("resnet18", num_classes, in_chans, stem, norm, switchable_stages, switchable_affine, fill_rescale)


@register_model
def resnet34(num_classes: int = 1000, in_chans: int = 3, stem: str = "torchvision", norm: str = "shared",
             switchable_stages: int | None = None, switchable_affine: bool = False,
             fill_rescale: bool = False) -> nn.Module:
    return _plain("resnet34", num_classes, in_chans, stem, norm, switchable_stages, switchable_affine, fill_rescale)


@register_model
def dynamic_resnet18(num_classes: int = 1000, in_chans: int = 3, stem_mode: str = "prefix",
                     stem: str = "torchvision", stem_rescale: bool = False, norm: str = "shared",
                     switchable_stages: int | None = None, switchable_affine: bool = False,
                     stem_args: dict | None = None) -> nn.Module:
    """ResNet18 whose first conv accepts any non-empty subset of the ``in_chans`` channels; ``stem_args``:
    the stem mode's own settings (:func:`dynconv.layers.stem_options`)."""
    return ResNet("resnet18", num_classes, in_chans, stem_mode, stem, stem_rescale, norm, switchable_stages,
                  switchable_affine, stem_args)


@register_model
def dynamic_resnet34(num_classes: int = 1000, in_chans: int = 3, stem_mode: str = "prefix",
                     stem: str = "torchvision", stem_rescale: bool = False, norm: str = "shared",
                     switchable_stages: int | None = None, switchable_affine: bool = False,
                     stem_args: dict | None = None) -> nn.Module:
    return ResNet("resnet34", num_classes, in_chans, stem_mode, stem, stem_rescale, norm, switchable_stages,
                  switchable_affine, stem_args)
