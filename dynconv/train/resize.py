"""Progressive resizing (as in FFCV's ImageNet recipe): train early epochs at a lower resolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resolution_at(epoch: int, start: int, end: int, ramp_epochs: int) -> int:
    """Training resolution of ``epoch`` (counting from 1): ``start`` in epoch 1, then linear to ``end`` in
    epoch ``ramp_epochs + 1`` and after, rounded to a multiple of 32 when both ends are multiples of 32
    (FFCV's rule, for ImageNet-sized inputs), else of 8."""
    if ramp_epochs <= 0 or epoch > ramp_epochs:
        return end
    step = 32 if start % 32 == 0 and end % 32 == 0 else 8
    res = start + (end - start) * (epoch - 1) / ramp_epochs
    return max(step, int(round(res / step)) * step)


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """A normalised NCHW batch resized to ``size``×``size`` on its device (bilinear, antialiased when
    shrinking, so that the low-resolution epochs see what a resized image would look like)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < x.shape[-1])
