"""Trainer events. Subclass :class:`Hook` and override what you need (e.g. the MLflow adapter)."""
from __future__ import annotations

from pathlib import Path


class Hook:
    """One no-op method per event; the trainer calls them on the process that owns the run."""

    def on_fit_start(self, info: dict) -> None:
        """``info``: model name, parameter count, dataset sizes, start epoch."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """``metrics``: ``train_loss``, ``train_acc``, ``val_acc``, ``lr``, with progressive resizing
        ``train_res`` (epochs count from 1)."""

    def on_checkpoint(self, path: Path, epoch: int) -> None:
        """A checkpoint for ``epoch`` is complete on disk at ``path`` (a file, or a DeepSpeed folder)."""

    def on_fit_end(self, final_checkpoint: Path) -> None:
        """Training finished; ``final_checkpoint`` holds the final weights."""
