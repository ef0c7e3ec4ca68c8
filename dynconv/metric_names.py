"""Metric names, defined once: what the trainer reports per epoch, what the final evaluation logs, and how
the per-subset rows of an evaluation become flat metrics."""
from __future__ import annotations

# per epoch (the trainer)
TRAIN_LOSS, TRAIN_ACC, VAL_ACC, LR, TRAIN_RES, EPOCH_TIME, DATA_WAIT = (
    "train_loss", "train_acc", "val_acc", "lr", "train_res", "epoch_time_s", "data_wait_s")
# training compute per epoch: images x passes over them (a sandwich step makes n_subsets), forward MACs of those
IMAGE_PASSES, TRAIN_MACS = "image_passes", "train_macs"
TRAIN_SECONDS = "train_seconds"  # the epochs' wall time (validation included), summed over the run: in eval.json
# summaries over the evaluated subsets
MEAN_SUBSET_ACC, WORST_SUBSET_ACC, RGB_GAP = "mean_subset_acc", "worst_subset_acc", "rgb_gap"
# an evaluation row's keys -> metric prefixes
ROW_PREFIXES = {"accuracy": "acc", "precision": "precision", "recall": "recall", "f1": "f1", "f1_macro": "f1_macro",
                "macs": "macs"}
VAL = "val_"  # per-epoch per-subset read-outs: val_acc_<subset>, val_mean_subset_acc, val_worst_subset_acc


def metric_name(kind: str, subset: str | None = None, per_epoch: bool = False) -> str:
    """``metric_name("accuracy", "RG")`` -> ``acc_RG``; ``per_epoch=True`` -> ``val_acc_RG``;
    a summary (``kind="mean_subset_acc"``, no subset) keeps its name."""
    name = ROW_PREFIXES.get(kind, kind) if subset is None else f"{ROW_PREFIXES.get(kind, kind)}_{subset}"
    return VAL + name if per_epoch else name


def flat_metrics(subsets: dict[str, dict[str, float]], summary: dict[str, float]) -> dict[str, float]:
    """An evaluation (``{"RGB": {"accuracy": ..., "macs": ...}}`` + summary) as flat metric names."""
    flat = {metric_name(k, subset): float(v) for subset, row in subsets.items() for k, v in row.items()}
    return {**flat, **{k: float(v) for k, v in summary.items()}}


# ---- the names MLflow shows: grouped by prefix, the learning curves first -------------------------------
CURVES, TIMING, SUBSET, COMPUTE = "curves/", "time/", "subset/", "compute/"
_TIMING = {EPOCH_TIME: "epoch_s", DATA_WAIT: "data_wait_s", "calibration_time_s": "calibration_s",
           "calibration_images": "calibration_images"}


def logged_name(key: str) -> str:
    """A per-epoch metric's MLflow name: ``train_loss`` -> ``curves/train_loss``, ``epoch_time_s`` ->
    ``time/epoch_s``, ``train_macs`` -> ``compute/train_macs`` (MLflow's charts group by the part before ``/``, alphabetically)."""
    if key in (IMAGE_PASSES, TRAIN_MACS):
        return COMPUTE + key
    return TIMING + _TIMING[key] if key in _TIMING else CURVES + key


def subset_metric(kind: str, subset: str | None = None) -> str:
    """A final evaluation's MLflow name: ``subset/RGB/acc``, ``subset/RG/f1``; summaries ``subset/<name>``."""
    return f"{SUBSET}{subset}/{ROW_PREFIXES.get(kind, kind)}" if subset else SUBSET + kind


def logged_evaluation(subsets: dict[str, dict[str, float]], summary: dict[str, float]) -> dict[str, float]:
    """An evaluation as the MLflow metrics of a run."""
    flat = {subset_metric(k, subset): float(v) for subset, row in subsets.items() for k, v in row.items()}
    return {**flat, **{subset_metric(k): float(v) for k, v in summary.items()}}
