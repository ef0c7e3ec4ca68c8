"""``torch.nn.parallel.DistributedDataParallel`` behind the :class:`Strategy` interface."""
from __future__ import annotations

from contextlib import nullcontext

from torch import nn

from .base import Strategy


class DDPStrategy(Strategy):
    """``torch.nn.parallel.DistributedDataParallel``: gradients all-reduced in the last micro-step's backward."""

    name = "ddp"

    def _wrap(self, model: nn.Module) -> nn.Module:
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def describe(self) -> str:
        return f"data-parallel over {self.dist.world} processes ({'nccl' if self.device.type == 'cuda' else 'gloo'})"

    def micro_step(self, final: bool):
        return nullcontext() if final else self.model.no_sync()
