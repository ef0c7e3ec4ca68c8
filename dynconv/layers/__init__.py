"""Channel-adaptive first layers and the stem factory."""
from ..choices import NORM_MODES, STEM_MODES
from .dynamic_conv import DynamicConv2D
from .generated_conv import DepthwiseStemConv2d, HyperNetConv2d, TemplateMixingConv2d
from .stems import STEM_PRESETS, create_stem, stem_options
from .subset_norm import SubsetBatchNorm2d, calibrate, convert_norm
from .target_conv import TargetConv2d

__all__ = ["STEM_MODES", "STEM_PRESETS", "DepthwiseStemConv2d", "DynamicConv2D", "HyperNetConv2d",
           "TargetConv2d", "TemplateMixingConv2d", "create_stem", "stem_options", "NORM_MODES", "SubsetBatchNorm2d", "calibrate", "convert_norm"]
