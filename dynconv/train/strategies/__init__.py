"""Training strategies behind one interface (:class:`Strategy`), found by name in a registry:
``single`` (one process), ``ddp`` (DistributedDataParallel) and ``deepspeed`` (ZeRO 0-3, offload)."""
from __future__ import annotations

from ...choices import STRATEGIES, check_choice
from .base import Strategy
from .ddp import DDPStrategy
from .deepspeed_engine import DeepSpeedOptions, DeepSpeedStrategy

_REGISTRY: dict[str, type[Strategy]] = {cls.name: cls for cls in (Strategy, DDPStrategy, DeepSpeedStrategy)}
assert tuple(_REGISTRY) == STRATEGIES


def build_strategy(name: str, device, dist=None, *, precision: str = "fp32", grad_accum_steps: int = 1,
                   grad_clip: float = 0.0, global_batch: int | None = None, options=None, passes: int = 1) -> Strategy:
    """The strategy ``name`` (``ddp`` needs a process group of 2+ processes; ``deepspeed`` any number);
    ``options`` are its own settings (``DeepSpeedOptions`` for ``deepspeed``); ``passes``: forward/backward passes
    per micro-batch (``ChannelDropout.n_passes``)."""
    from ..distributed import DistInfo

    cls = _REGISTRY[check_choice(name, STRATEGIES, "training strategy")]
    return cls(device=device, dist=dist or DistInfo(), precision=precision, grad_accum_steps=grad_accum_steps,
               grad_clip=grad_clip, global_batch=global_batch, options=options, passes=passes)


__all__ = ["DDPStrategy", "DeepSpeedOptions", "DeepSpeedStrategy", "Strategy", "build_strategy"]
