"""An exponential moving average of the weights (timm's ``--model-ema``): ``ema = d·ema + (1 - d)·live``
after every optimiser step, with the usual warm-up ``d = min(decay, (1 + n) / (10 + n))`` so early
averages are not dominated by the random initialisation. Floating-point buffers (BatchNorm statistics) are
averaged too; integer ones are copied. Its state (weights and update count) is part of every checkpoint,
so a resumed run continues the same average bitwise."""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, module: nn.Module, decay: float):
        self.module = copy.deepcopy(module).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = float(decay), 0
        self._pairs: tuple[list, list, list, list] | None = None

    def _tensors(self, live: nn.Module):
        if self._pairs is None:
            ema, src = self.module.state_dict(keep_vars=True), live.state_dict(keep_vars=True)
            floats = [k for k, v in ema.items() if v.is_floating_point()]
            others = [k for k in ema if k not in floats]
            self._pairs = ([ema[k].data for k in floats], [src[k].data for k in floats],
                           [ema[k].data for k in others], [src[k].data for k in others])
        return self._pairs

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        ema_f, live_f, ema_o, live_o = self._tensors(live)
        torch._foreach_lerp_(ema_f, live_f, 1.0 - d)
        for e, v in zip(ema_o, live_o):
            e.copy_(v)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
