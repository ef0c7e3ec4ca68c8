"""Channel-adaptive first layers and the stem factory."""
from .dynamic_conv import STEM_MODES, DynamicConv2D
from .generated_conv import DepthwiseStemConv2d, HyperNetConv2d, TemplateMixingConv2d
from .stems import STEM_PRESETS, create_stem
from .subset_norm import NORM_MODES, SubsetBatchNorm2d, calibrate, convert_norm

__all__ = ["STEM_MODES", "STEM_PRESETS", "DepthwiseStemConv2d", "DynamicConv2D", "HyperNetConv2d",
           "TemplateMixingConv2d", "create_stem", "NORM_MODES", "SubsetBatchNorm2d", "calibrate", "convert_norm"]
