"""A mixture of datasets (``data.train`` as a list) for the trainer and the evaluation: each dataset's
statistics, loaders, transforms and channel dropout, and the evaluation of every dataset on the subsets of
its channels."""
from __future__ import annotations

from typing import Callable

import torch

from dynconv.channels import num_channels, subsets_within
from dynconv.data import BatchTransform
from dynconv.data.mixture import MixturePart, MixtureSource, positions_in
from dynconv.dropout import ChannelDropout
from dynconv.errors import DynconvError
from dynconv.evaluate import summarize

DATASETS_TAG = "dynconv.datasets"  # MLflow tag of a mixture run: JSON [{name, channels}], read by dynconv compare


def manifest_datasets(entries, stats: list[tuple[list[float], list[float]]]) -> list[dict]:
    """What a checkpoint records of each dataset: enough to evaluate the model on it later."""
    return [{"name": e.label, "channels": e.channels, "mean": list(m), "std": list(s)}
            for e, (m, s) in zip(entries, stats)]


def dataset_part(name: str, channels: str, vocab: str, mean, std, device: torch.device,
                 transform: Callable | None = None, dropout: ChannelDropout | None = None) -> MixturePart:
    """One dataset of a model over ``vocab``: where its channels sit, its normalisation for evaluation, and (for
    training) its transform and channel dropout."""
    return MixturePart(name, channels, positions_in(channels, vocab), num_channels(vocab), transform,
                       BatchTransform(mean, std, device), dropout)


def part_of(manifest: dict, dataset: dict, device: torch.device) -> MixturePart:
    """A recorded dataset (an item of ``manifest["datasets"]``) of the model's vocabulary."""
    return dataset_part(dataset["name"], dataset["channels"], manifest["channels"], dataset["mean"], dataset["std"],
                        device)


def dataset_entry(manifest: dict, name: str | None, data_channels: int | None = None) -> dict:
    """The recorded dataset called ``name``; without a name, the only one with ``data_channels`` channels."""
    datasets = manifest["datasets"]
    names = ", ".join(d["name"] for d in datasets)
    if name is not None:
        found = [d for d in datasets if d["name"] == name]
        if not found:
            raise DynconvError(f"the model was trained on datasets {names}, not {name!r}: pass --dataset with one of them")
        return found[0]
    fitting = [d for d in datasets if num_channels(d["channels"]) == data_channels]
    if len(fitting) != 1:
        raise DynconvError(f"the model was trained on a mixture of datasets ({names}): pass --dataset NAME to say "
                           "which one's channels and normalisation the data has")
    return fitting[0]


def dropout_weights(weights: dict[str, float], channels: str) -> dict[str, float]:
    """``dropout.weights`` of a mixture, restricted to the subsets of one dataset's channels (in its spelling)."""
    return {name: w for orig, w in weights.items() if (name := subsets_within(orig, channels))}


def check_weights_apply(weights: dict[str, float], channel_sets: list[str]) -> None:
    unused = [w for w in weights if not any(subsets_within(w, c) for c in channel_sets)]
    if unused:
        raise DynconvError(f"dropout.weights names {', '.join(unused)}, a subset of no dataset of data.train "
                           f"({', '.join(channel_sets)})")


def evaluate_mixture(evaluate_one: Callable, model, manifest: dict, val: MixtureSource, subsets: str | None,
                     device: torch.device) -> dict:
    """Every dataset on the subsets of its channels that ``subsets`` names; rows ``<dataset>:<subset>``."""
    per = {}
    for dataset, source in zip(manifest["datasets"], val.sources):
        within = subsets_within(subsets, dataset["channels"])
        if within != "":
            per[dataset["name"]] = evaluate_one(model, manifest, source, within, device, dataset=dataset["name"])
    flat = {f"{name}:{s}": row for name, report in per.items() for s, row in report["subsets"].items()}
    return {"model": manifest["model"], "image_size": manifest["image_size"], "channels": manifest["channels"],
            "num_samples": val.num_samples, "datasets": per, "subsets": flat, "summary": summarize(flat)}
