"""dynconv: channel-adaptive CNNs — models whose first layer accepts any subset of the input channels —
and the tools to train them at scale and measure accuracy and compute per channel subset.

```python
import dynconv

model = dynconv.create_model("dynamic_resnet18", num_classes=10, stem_mode="slice")
logits = model(images[:, [0, 2]], channels=(0, 2))   # only R and B present
```

The top-level names are loaded lazily, so ``import dynconv`` (and ``dynconv --version``) stays fast.
"""
from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__", "create_model", "list_models", "evaluate_subsets", "all_subsets", "DynconvError"]

_LAZY = {
    "create_model": "dynconv.models",
    "list_models": "dynconv.models",
    "evaluate_subsets": "dynconv.evaluate",
    "all_subsets": "dynconv.channels",
    "DynconvError": "dynconv.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dynconv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
