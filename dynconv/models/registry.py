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


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise DynconvError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _MODELS[name]


def model_options(name: str) -> list[str]:
    """The keyword arguments the builder of model ``name`` takes."""
    return list(inspect.signature(_builder(name)).parameters)


def resolve_model_kwargs(name: str, **kwargs) -> dict:
    """Every keyword argument of model ``name``'s builder as it builds: the given ones (``None``: not given)
    and the builder's own defaults for the rest. What checkpoints and MLflow record, so that no reader has
    to guess a default; building from it gives the same model."""
    signature = inspect.signature(_builder(name))
    given = {k: v for k, v in kwargs.items() if v is not None}
    for key in given:
        if key not in signature.parameters:
            raise DynconvError(f"model {name} has no option {key!r} (it takes {', '.join(signature.parameters)}): "
                               f"drop it, or choose a dynamic_* model for channel-adaptive stems")
    bound = signature.bind(**given)
    bound.apply_defaults()
    return dict(bound.arguments)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments that are ``None`` are dropped (builder defaults)."""
    return _builder(name)(**resolve_model_kwargs(name, **kwargs))
