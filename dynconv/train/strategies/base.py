"""How a training step's gradients are computed, reduced and applied, and how training state is saved.

One training loop (``loop.py``) drives every strategy through the same small interface:

* ``setup(model, optimizer)`` wraps the model (``DistributedDataParallel``, a DeepSpeed engine);
* per micro-batch, for each of its ``passes`` (subsets of the sandwich rule; usually one), ``micro_step(final)``
  (a context: DDP skips the gradient all-reduce but on the step's last pass), ``autocast()``, ``backward(loss)``
  (the pass's loss times its weight, the weights of a micro-batch's passes summing to 1); per optimiser step ``step()``, or ``discard(done)`` after a non-finite loss;
* ``save(state, path)`` / ``load(path)`` for checkpoints carrying dynconv's client state (manifest, epoch,
  step, partial accumulators, scheduler, RNG); ``eval_module()``: the plain model with full fp32 weights
  for validation, calibration and the final (consolidated) checkpoint.

This module is the base (one process, plain PyTorch); it knows none of its subclasses. ``single`` and
``ddp`` write one ``.pt`` file per checkpoint; ``deepspeed`` writes DeepSpeed's own checkpoint folders.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ...choices import PRECISIONS, check_choice
from ...errors import DynconvError
from ..checkpoint import atomic_torch_save, load_checkpoint
from ..distributed import DistInfo

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
assert tuple(AMP_DTYPES) == PRECISIONS


def prepare(model: nn.Module, channels_last: bool, compile: bool) -> None:
    if channels_last:  # the 4-D tensors (convolution weights): ``model.to(memory_format=...)`` refuses a model
        # that also holds 5-D ones (the depthwise stem's filter bank)
        for t in (*model.parameters(), *model.buffers()):
            if t.dim() == 4:
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    if compile:
        model.compile()


class Strategy:
    """One process, plain PyTorch (the base of the others)."""

    name = "single"
    checkpoint_suffix = ".pt"  # DeepSpeed: "" (a folder)

    def __init__(self, device: torch.device, dist: DistInfo = DistInfo(), precision: str = "fp32",
                 grad_accum_steps: int = 1, grad_clip: float = 0.0, global_batch: int | None = None,
                 options=None, passes: int = 1):
        """``options``: a strategy's own settings (DeepSpeed: :class:`DeepSpeedOptions`); none here. ``passes``:
        forward/backward passes per micro-batch (the sandwich rule's subsets), each its own micro-step."""
        if options is not None:
            raise DynconvError(f"train.strategy={self.name} takes no strategy options (they are for deepspeed)")
        self.device, self.dist, self.precision = device, dist, check_choice(precision, PRECISIONS, "precision")
        self.grad_accum_steps, self.grad_clip = int(grad_accum_steps), float(grad_clip)
        self.passes = int(passes)
        self.model: nn.Module | None = None    # what the loop calls (a wrapper, or the module itself)
        self.module: nn.Module | None = None   # the plain model
        self.optimizer = None
        self.scaler: torch.amp.GradScaler | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def setup(self, model: nn.Module, optimizer, channels_last: bool = False, compile: bool = False) -> None:
        """Take over ``model`` (built on the training device) and its ``optimizer``; ``channels_last`` and
        ``compile`` (``nn.Module.compile``, in place: the state_dict keys stay the plain model's) are applied
        before any wrapper flattens or hooks the parameters."""
        prepare(model, channels_last, compile)
        self.module, self.model, self.optimizer = model, self._wrap(model), optimizer
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model

    def describe(self) -> str:
        return "single process"

    # ---- one optimiser step over grad_accum_steps micro-batches -------------------------------------
    def micro_step(self, final: bool):
        """Context around one micro-batch's forward and backward (``final``: the last before ``step``)."""
        return nullcontext()

    def autocast(self):
        dtype = AMP_DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one pass's weighted mean loss (averaged over the micro-batches)."""
        loss = loss / self.grad_accum_steps
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self) -> None:
        if self.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def discard(self, done: int) -> None:
        """Drop this optimiser step after a non-finite loss on its micro-step ``done`` (0-based, counting passes):
        the gradients of the ``done`` micro-steps before it are thrown away and no update happens."""
        self.optimizer.zero_grad(set_to_none=True)

    # ---- checkpoints and weights ----------------------------------------------------------------------
    def save(self, state: dict, path: Path) -> Path | None:
        """Write ``state`` (dynconv's client state) with the model, optimiser and scaler state to ``path``
        (called on every process; only the main one writes)."""
        if not self.is_main:
            return None
        return atomic_torch_save({**state, "model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                                  "scaler": self.scaler.state_dict() if self.scaler else None}, path)

    def load(self, path: Path, ckpt: dict | None = None) -> dict:
        """Restore model, optimiser and scaler from a checkpoint written by :meth:`save` (``ckpt``: the
        already loaded file); returns the client state."""
        if Path(path).is_dir():
            raise DynconvError(f"{path} is a DeepSpeed checkpoint: resume it with train.strategy=deepspeed, or "
                               f"turn it into weights with 'dynconv export {path} OUT.pt'")
        ckpt = ckpt if ckpt is not None else load_checkpoint(path)
        if "optimizer" not in ckpt:
            raise DynconvError(f"cannot resume from {path}: it holds final weights only; resume from run.dir/checkpoints")
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        return ckpt

    def eval_module(self) -> nn.Module:
        """The plain model with its full fp32 weights, for validation, calibration and the final checkpoint
        (called on every process: DeepSpeed's ZeRO-3 gathers the weights collectively)."""
        return self.module
