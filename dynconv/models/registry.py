"""Model registry: ``@register_model`` on a builder function, ``create_model(name, **kw)`` to build."""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from ..errors import DynconvError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(name: str) -> list[str]:
    """The keyword arguments the builder of model ``name`` takes."""
    if name not in _MODELS:
        raise DynconvError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return list(inspect.signature(_MODELS[name]).parameters)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments that are ``None`` are dropped (builder defaults)."""
    if name not in _MODELS:
        raise DynconvError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    accepted = inspect.signature(_MODELS[name]).parameters
    for key in kwargs:
        if key not in accepted:
            raise DynconvError(f"model {name} has no option {key!r} (it takes {', '.join(accepted)}): "
                               f"drop it, or choose a dynamic_* model for channel-adaptive stems")
    return _MODELS[name](**kwargs)
