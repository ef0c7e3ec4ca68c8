"""The files of a run folder (``run.dir``), named once. Written by the trainer (checkpoints, ``model.pt``),
the application layer (``config.yaml``, ``eval.*``, the MLflow records) and the sweep (``sweep_trial.json``)."""
from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = "checkpoints"            # epoch_NNNN[_step_SSSSSS](.pt)
MODEL = "model.pt"                     # final plain fp32 weights
CONFIG = "config.yaml"                 # the resolved config of the run
SOURCE = "source.json"                 # where it was launched from: directory, git commit, dynconv version, command
EVAL_JSON = "eval.json"                # the final per-subset evaluation
EVAL_MD = "eval.md"
EVAL_PNG = "eval.png"                  # accuracy per subset and against MACs
MLFLOW_RUN = "mlflow_run.json"         # lets a resumed run keep logging to the same MLflow run
TRACKING_BUFFER = "tracking_buffer.jsonl"  # MLflow records not yet delivered to the store
LOCK = ".lock"                         # one training process per run folder
TRAIN_LOG = "train.log"                # a sweep trial's log
SWEEP_TRIAL = "sweep_trial.json"       # a sweep trial's current values and the exploits it took


def recorded_mlflow_run(run_dir: str | Path | None) -> dict | None:
    """``{"run_id", "tracking_uri"}`` of the MLflow run that ``run_dir`` logs to, or None (none yet, or
    unreadable)."""
    if not run_dir:
        return None
    try:
        info = json.loads((Path(run_dir) / MLFLOW_RUN).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "run_id" in info else None
