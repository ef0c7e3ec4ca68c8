"""Training: the loop, optimisers, checkpoints and hooks."""
from .checkpoint import atomic_torch_save, latest_checkpoint, load_checkpoint
from .hooks import Hook
from .loop import FitSpec, fit
from .optim import build_optimizer, build_scheduler

__all__ = ["FitSpec", "Hook", "atomic_torch_save", "build_optimizer", "build_scheduler", "fit",
           "latest_checkpoint", "load_checkpoint"]
