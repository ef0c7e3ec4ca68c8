"""``create_stem``: the first convolution of a model, plain or channel-adaptive, and the stem presets."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..choices import STEM_MODES, STEM_PRESETS, check_choice
from .dynamic_conv import DynamicConv2D
from .generated_conv import DepthwiseStemConv2d, HyperNetConv2d, TemplateMixingConv2d
from .target_conv import TargetConv2d


@dataclass(frozen=True)
class StemPreset:
    kernel: int
    stride: int
    padding: int


# torchvision: 7×7 stride 2 (a 96 px input becomes 48×48, then max-pool 24×24).
# study: the original study's dynamic ResNet18 stem. Its reported MACs (1,274,698,880 at 96 px, 26,543,104
# = 64·49·92·92 fewer per dropped channel) imply a 7×7 conv with stride 1 and padding 1: (96 + 2 - 7) + 1
# = 92, followed by the usual max-pool (46×46); see tests/test_models.py for the exact reconstruction.
STEM_GEOMETRY = {"torchvision": StemPreset(7, 2, 3), "study": StemPreset(7, 1, 1)}
assert tuple(STEM_GEOMETRY) == STEM_PRESETS


def stem_preset(name: str) -> StemPreset:
    return STEM_GEOMETRY[check_choice(name, STEM_PRESETS, "stem preset")]


def create_stem(mode: str | None, in_chans: int, out_chans: int, preset: str = "torchvision",
                rescale: bool = False) -> nn.Module:
    """``mode=None`` gives a plain ``nn.Conv2d``; otherwise one of :data:`STEM_MODES`."""
    p = stem_preset(preset)
    geometry = dict(kernel_size=p.kernel, stride=p.stride, padding=p.padding, bias=False)
    if mode is None:
        conv = nn.Conv2d(in_chans, out_chans, **geometry)
    elif mode in ("prefix", "slice"):
        conv = DynamicConv2D(in_chans, out_chans, mode=mode, rescale=rescale, **geometry)
    elif mode == "template_mixing":
        return TemplateMixingConv2d(in_chans, out_chans, **geometry)
    elif mode == "hypernet":
        return HyperNetConv2d(in_chans, out_chans, **geometry)
    elif mode == "depthwise":
        return DepthwiseStemConv2d(in_chans, out_chans, **geometry)
    elif mode == "target":
        return TargetConv2d(in_chans, out_chans, **geometry)
    else:
        check_choice(mode, STEM_MODES, "stem mode")
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv
