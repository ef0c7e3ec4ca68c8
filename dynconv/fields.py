"""Dataclass fields that document themselves: the library's option dataclasses (augmentation, DeepSpeed)
are the one definition of their config sections; ``dynconv.launch.config`` derives the schema from them."""
from __future__ import annotations

from dataclasses import field


def param(default, doc: str, **bounds):
    """A dataclass field whose ``metadata`` carries its meaning and bounds (``ge``, ``le``, ``gt``, ``lt``)."""
    return field(default=default, metadata={"doc": doc, **bounds})
