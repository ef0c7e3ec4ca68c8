"""Training: the loop, its events (hooks), strategies (single process, DDP, DeepSpeed), optimisers,
checkpoints."""
from .checkpoint import atomic_torch_save, latest_checkpoint, load_checkpoint
from .hooks import (Algorithm, Callback, Evaluator, FitResult, Hook, Logger, StoppedEarly, TrainingDiverged,
                    TrainingPreempted)
from .loop import FitSpec, fit
from .optim import build_optimizer, build_scheduler
from .strategies import DeepSpeedOptions, Strategy, build_strategy

__all__ = ["Algorithm", "Callback", "DeepSpeedOptions", "Evaluator", "FitResult", "Logger", "FitSpec", "Hook", "StoppedEarly", "Strategy", "TrainingDiverged",
           "TrainingPreempted", "atomic_torch_save", "build_optimizer", "build_scheduler", "build_strategy", "fit",
           "latest_checkpoint", "load_checkpoint"]
