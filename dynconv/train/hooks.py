"""Trainer events: the one way to extend ``fit`` (as Composer's algorithms, callbacks and loggers).

Subclass one of the four roles and override the events you need. At every event ``fit`` calls the hooks role
by role, in this order, and within a role in the order given:

1. :class:`Algorithm` — changes the model's state (per-subset BatchNorm calibration); every process;
2. :class:`Evaluator` — makes the run's result (the final evaluation puts its report in ``FitResult``);
3. :class:`Logger` — records what happened (MLflow): sees the report, and logs an epoch before anyone may
   stop training on it;
4. :class:`Callback` — observes and may end training (Ray Tune reporting and early stops, Slurm's
   pre-emption). A plain :class:`Hook` counts as a callback.

The trainer itself owns no tracker and no run status. Events, in the order they happen:

* ``on_fit_start(info)`` — main process;
* ``should_stop()`` — every process, before every optimiser step; true on any process: every process writes a
  mid-epoch checkpoint at the same step and ``fit`` raises :class:`TrainingPreempted`;
* ``before_validation(module, epoch)`` — every process (collectives allowed), before each epoch's validation;
  metrics it returns join the epoch's;
* ``on_epoch_end(epoch, metrics, checkpoint)`` — main process, after the epoch's checkpoint is on disk;
* ``before_final(module)`` — every process, after the last epoch and before ``model.pt`` is written;
* ``on_fit_end(result)`` — main process; hooks may add to ``result`` (the final evaluation puts its report
  there for the hooks after it);
* ``on_exception(exc)`` — main process, when ``fit`` ends with an exception (re-raised afterwards).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import DynconvError


class TrainingPreempted(Exception):
    """A hook's ``should_stop`` turned true (e.g. Slurm's pre-emption signal): training stopped at a step
    boundary after writing a mid-epoch checkpoint, so ``train.resume=auto`` continues exactly there."""

    def __init__(self, epoch: int, step: int, checkpoint: Path | None):
        super().__init__(f"stopped on request at epoch {epoch} step {step}; checkpoint {checkpoint}")
        self.epoch, self.step, self.checkpoint = epoch, step, checkpoint


class StoppedEarly(SystemExit):
    """A hook ended training on purpose before the last epoch (a sweep scheduler stopped the trial): not a
    failure. A ``SystemExit`` with code 0, which is how Ray Tune ends a stopped trial's thread."""

    def __init__(self, reason: str):
        super().__init__(0)
        self.reason = reason


class TrainingDiverged(DynconvError):
    """The loss became NaN/Inf more often than ``max_bad_steps`` allows."""


@dataclass
class FitResult:
    """What ``fit`` hands to ``on_fit_end`` and returns."""

    final_checkpoint: Path          # run_dir/model.pt: plain fp32 weights
    module: nn.Module               # the trained model (full weights)
    epochs: int
    last_metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    report: dict | None = None      # the final per-subset evaluation, once a hook has made it
    files: list[Path] = field(default_factory=list)  # report files written by hooks (logged as artifacts)
    compute: dict[str, float] = field(default_factory=dict)  # training compute: image_passes, train_macs (forward)


class Hook:
    """One no-op method per event (see the module docstring for when each runs); ``role`` orders it."""

    role = "callback"

    def on_fit_start(self, info: dict) -> None:
        """``info``: parameter count, dataset sizes, start epoch."""

    def should_stop(self) -> bool:
        return False

    def before_validation(self, module: nn.Module, epoch: int) -> dict[str, float] | None:
        """Every process: e.g. re-estimate per-subset normalisation statistics; metrics returned (the main
        process's) join the epoch's."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        """``metrics``: ``train_loss``, ``train_acc``, ``val_acc``, ``lr``, per-subset ``val_acc_<subset>``
        when configured, ``train_res`` with progressive resizing; epochs count from 1. ``checkpoint``: the
        epoch's checkpoint (a file, or a DeepSpeed folder)."""

    def before_final(self, module: nn.Module) -> None:
        """Every process, before ``model.pt`` is written."""

    def on_fit_end(self, result: FitResult) -> None:
        """Training finished; ``result.final_checkpoint`` holds the final weights."""

    def on_exception(self, exc: BaseException) -> None:
        """``fit`` is ending with ``exc`` (pre-emption, an early stop, an error, an interrupt)."""


class Algorithm(Hook):
    """Changes the training state (e.g. re-estimates normalisation statistics); runs first, on every process."""

    role = "algorithm"


class Evaluator(Hook):
    """Makes the run's result (``FitResult.report``, report files) for the loggers and callbacks after it."""

    role = "evaluator"


class Logger(Hook):
    """Records the run (parameters, metrics, files, status); never changes it."""

    role = "logger"


class Callback(Hook):
    """Observes the run and may end it (``should_stop``, an early stop); never changes the model."""

    role = "callback"


ROLES = ("algorithm", "evaluator", "logger", "callback")


def in_role_order(hooks) -> list[Hook]:
    """``hooks`` as ``fit`` calls them: by role (:data:`ROLES`), in the given order within a role."""
    return sorted(hooks, key=lambda h: ROLES.index(h.role))


def overrides(hook: Hook, event: str) -> bool:
    """Whether ``hook`` implements ``event`` (the trainer skips per-step collectives nobody listens to)."""
    return getattr(type(hook), event) is not getattr(Hook, event)
