"""Shared fixtures: a tiny synthetic dataset (folders and .beton files), made once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import hypothesis  # noqa: F401  (import early: hypothesis' pytest plugin otherwise imports it at the very end
#                    of a session, deep in pytest's stack, where CPython 3.11.7 can fail with "AST constructor
#                    recursion depth mismatch" while rewriting its modules)
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes × (80 train, 16 val) images at 32 px, plus train.beton / val.beton."""
    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton
    from dynconv.data.synth import write_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_dataset(root, num_classes=4, train_per_class=80, val_per_class=16, size=32, seed=0)
    for split in ("train", "val"):
        write_beton(scan_image_folder(root / split), root / f"{split}.beton", max_side=32, num_workers=1)
    return root


def run_cli(*argv: str) -> int:
    from launch.cli import main

    return main([str(a) for a in argv])
