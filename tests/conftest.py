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


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm (slurm/local-cluster.sh up: installs slurm-wlm/munge/MariaDB when missing).
    Left running if it was already up; stopped at the end if this session started it."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "slurm" / "local-cluster.sh"
    was_up = subprocess.run(["bash", str(script), "status"], capture_output=True).returncode == 0
    if not was_up:
        r = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
            pytest.skip(f"slurmctld could not start on this machine: {tail}")
    yield
    if not was_up:
        subprocess.run(["bash", str(script), "down"], capture_output=True, timeout=120)
