"""Optional dependencies: a missing extra is one line naming the extra to install, never an ImportError
traceback. ``pip install 'dynconv[all]'`` brings every one (what ``make`` installs)."""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import DynconvError

# extra -> (the module that proves it is installed, what it is for)
EXTRAS = {
    "ffcv": ("ffcv", "FFCV .beton files"),
    "deepspeed": ("deepspeed", "train.strategy=deepspeed"),
    "slurm": ("submitit", "Slurm jobs"),
    "sweep": ("ray.tune", "sweeps"),
    "track": ("mlflow", "MLflow tracking"),
}


class MissingExtra(DynconvError):
    """An optional dependency group is not installed."""


def require(extra: str, module: str | None = None) -> ModuleType:
    """Import the module of ``extra`` (or ``module``, part of it); a one-line :class:`MissingExtra` if it
    cannot be imported."""
    name, what = EXTRAS[extra]
    name = module or name
    try:
        return importlib.import_module(name)
    except ImportError as e:
        why = str(e).splitlines()[0][:120] if str(e) else e.__class__.__name__
        raise MissingExtra(f"{what} need the '{extra}' extra ({why}): pip install 'dynconv[{extra}]'") from None
