"""``create_stem``: the first convolution of a model, plain or channel-adaptive, and the stem presets."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn

from ..choices import STEM_MODES, STEM_PRESETS, check_choice
from ..errors import DynconvError
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


STEMS = {"template_mixing": TemplateMixingConv2d, "hypernet": HyperNetConv2d, "depthwise": DepthwiseStemConv2d,
         "target": TargetConv2d}
_GEOMETRY_ARGS = {"self", "in_channels", "out_channels", "kernel_size", "stride", "padding", "bias"}


def stem_options(mode: str | None) -> list[str]:
    """The settings ``stem_args`` may give stem ``mode`` (``model.stem_args``)."""
    cls = STEMS.get(mode)
    return [] if cls is None else [k for k in inspect.signature(cls.__init__).parameters if k not in _GEOMETRY_ARGS]


def create_stem(mode: str | None, in_chans: int, out_chans: int, preset: str = "torchvision",
                rescale: bool = False, stem_args: dict | None = None) -> nn.Module:
    """``mode=None`` gives a plain ``nn.Conv2d``; otherwise one of :data:`STEM_MODES`. ``stem_args`` are the
    mode's own settings (:func:`stem_options`), e.g. ``{"num_templates": 8}`` for ``template_mixing``."""
    p = stem_preset(preset)
    geometry = dict(kernel_size=p.kernel, stride=p.stride, padding=p.padding, bias=False)
    if mode is not None:
        check_choice(mode, STEM_MODES, "stem mode")
    args = dict(stem_args or {})
    accepted = stem_options(mode)
    unknown = [k for k in args if k not in accepted]
    if unknown:
        takes = f"takes {', '.join(accepted)}" if accepted else "takes none"
        raise DynconvError(f"model.stem_args: stem_mode={mode} has no setting {unknown[0]!r} ({takes})")
    if mode in STEMS:
        try:
            return STEMS[mode](in_chans, out_chans, **geometry, **args)
        except (TypeError, ValueError) as e:
            raise DynconvError(f"model.stem_args for stem_mode={mode}: {e}") from None
    if mode is None:
        conv = nn.Conv2d(in_chans, out_chans, **geometry)
    else:  # prefix, slice
        conv = DynamicConv2D(in_chans, out_chans, mode=mode, rescale=rescale, **geometry)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv
