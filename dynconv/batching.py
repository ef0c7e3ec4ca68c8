"""The global batch: images per optimiser step over every process and micro-step."""
from __future__ import annotations

from .errors import DynconvError


def check_global_batch(global_batch: int, world: int, grad_accum_steps: int) -> int:
    """Images per process per micro-step: ``global_batch / (world x grad_accum_steps)``, which must be whole."""
    if global_batch % (world * grad_accum_steps):
        raise DynconvError(f"train.batch_size={global_batch} must be divisible by processes x train.grad_accum_steps "
                           f"= {world} x {grad_accum_steps}")
    return global_batch // (world * grad_accum_steps)
