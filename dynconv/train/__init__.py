"""Training: the loop, strategies (single process, DDP, DeepSpeed), optimisers, checkpoints and hooks."""
from .checkpoint import atomic_torch_save, latest_checkpoint, load_checkpoint
from .hooks import Hook
from .loop import FitSpec, fit
from .optim import build_optimizer, build_scheduler
from .strategy import DeepSpeedOptions, Strategy, build_strategy

__all__ = ["DeepSpeedOptions", "FitSpec", "Hook", "Strategy", "atomic_torch_save", "build_optimizer",
           "build_scheduler", "build_strategy", "fit", "latest_checkpoint", "load_checkpoint"]
