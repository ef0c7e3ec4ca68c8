"""ResNets from torchvision, optionally with a channel-adaptive first convolution."""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from ..layers import DynamicConv2D
from .registry import register_model


def _resnet(arch: str, num_classes: int, in_chans: int, dynamic: bool) -> nn.Module:
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if dynamic or in_chans != 3:
        cls = DynamicConv2D if dynamic else nn.Conv2d
        old = model.conv1
        model.conv1 = cls(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding,
                          bias=old.bias is not None)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    return _resnet("resnet18", num_classes, in_chans, dynamic=False)


@register_model
def resnet34(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    return _resnet("resnet34", num_classes, in_chans, dynamic=False)


@register_model
def dynamic_resnet18(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    """ResNet18 whose first conv is a :class:`DynamicConv2D` (accepts 1..in_chans channels)."""
    return _resnet("resnet18", num_classes, in_chans, dynamic=True)


@register_model
def dynamic_resnet34(num_classes: int = 1000, in_chans: int = 3) -> nn.Module:
    return _resnet("resnet34", num_classes, in_chans, dynamic=True)
