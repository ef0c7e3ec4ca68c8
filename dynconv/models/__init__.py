"""Model families and their registry."""
from . import ran, resnet  # noqa: F401  (registers the builders)
from .base import SubsetModel
from .registry import create_model, list_models, model_options, register_model, resolve_model_kwargs

__all__ = ["SubsetModel", "create_model", "list_models", "model_options", "register_model", "resolve_model_kwargs"]
