"""Channel-adaptive layers."""
from .dynamic_conv import DynamicConv2D

__all__ = ["DynamicConv2D"]
