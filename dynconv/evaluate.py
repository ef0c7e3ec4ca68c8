"""Per-channel-subset evaluation: accuracy, weighted precision/recall/F1 (as in the study), macro F1, MACs."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .channel_select import forward_subset
from .channels import Subset, num_channels, subset_name
from .flops import count_macs
from .metric_names import MEAN_SUBSET_ACC, WORST_SUBSET_ACC, metric_name


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    # imported here: sklearn takes ~2 s to import, which every process (each rank, each resumed or killed job)
    # would pay at start-up, while only the final evaluation needs it
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


@torch.no_grad()
def predict_subsets(model: nn.Module, batches: Iterable, transform: Callable, subsets: list[Subset],
                    device: torch.device) -> tuple[np.ndarray, dict[Subset, np.ndarray]]:
    """One pass over the data; every batch is scored under every subset."""
    model.eval()
    labels, preds = [], {s: [] for s in subsets}
    for images, y in batches:
        x = transform(images)
        labels.append(y.numpy())
        for s in subsets:
            preds[s].append(forward_subset(model, x, s).argmax(1).cpu().numpy())
    return np.concatenate(labels), {s: np.concatenate(p) for s, p in preds.items()}


def evaluate_subsets(model: nn.Module, batches: Iterable, transform: Callable, subsets: list[Subset],
                     channels: str, image_size: int, device: torch.device) -> dict[str, dict[str, float]]:
    """``{"RGB": {"accuracy", "precision", "recall", "f1", "f1_macro", "macs"}, ...}``."""
    y, preds = predict_subsets(model, batches, transform, subsets, device)
    out = {}
    for s in subsets:
        row = classification_metrics(y, preds[s])
        row["macs"] = count_macs(model, num_channels(channels), image_size, s)
        out[subset_name(s, channels)] = row
    return out


def subset_accuracies(model: nn.Module, batches: Iterable, transform: Callable, subsets: list[Subset],
                      channels: str, device: torch.device) -> dict[str, float]:
    """Light per-epoch read-out: ``val_acc_<subset>`` for each subset plus ``val_mean_subset_acc`` and
    ``val_worst_subset_acc`` (``val_`` keeps them apart from the final evaluation's ``acc_*`` metrics)."""
    y, preds = predict_subsets(model, batches, transform, subsets, device)
    accs = {metric_name("accuracy", subset_name(s, channels), per_epoch=True): float((preds[s] == y).mean())
            for s in subsets}
    return {**accs, metric_name(MEAN_SUBSET_ACC, per_epoch=True): float(np.mean(list(accs.values()))),
            metric_name(WORST_SUBSET_ACC, per_epoch=True): float(min(accs.values()))}


def summarize(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean and worst accuracy over the evaluated subsets."""
    accs = [r["accuracy"] for r in results.values()]
    return {MEAN_SUBSET_ACC: float(np.mean(accs)), WORST_SUBSET_ACC: float(np.min(accs))}
