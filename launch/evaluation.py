"""Scoring a model on every channel subset of a validation set: `dynconv eval` of a checkpoint, and the
final evaluation of a training (:class:`FinalEvaluation`)."""
from __future__ import annotations

from pathlib import Path

import torch

from dynconv.channels import num_channels, parse_subsets, subset_name
from dynconv.data import BatchTransform, DataSource, build_source
from dynconv.data.mixture import MixtureSource
from dynconv.errors import DynconvError
from dynconv.fileio import read_json
from dynconv.evaluate import evaluate_subsets, summarize
from dynconv.run_files import EVAL_JSON, EVAL_MD, EVAL_PNG
from dynconv.train import Evaluator, FitResult
from dynconv.train.checkpoint import load_checkpoint, model_from_checkpoint

from .mixture import dataset_entry, evaluate_mixture, part_of
from .plots import subset_figure
from .report import write_reports


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DynconvError(f"device {name!r} requested but CUDA is not available: use train.device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise DynconvError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None


def check_classes(source: DataSource, num_classes: int, trained_on: list[str] | None, what: str) -> None:
    if source.classes is None:
        return
    if len(source.classes) != num_classes:
        raise DynconvError(f"{what} has {len(source.classes)} classes but the model has {num_classes} "
                           f"(model.num_classes={num_classes}): use data with {num_classes} class folders, or train "
                           f"a model with model.num_classes={len(source.classes)}")
    if trained_on and list(trained_on) != list(source.classes):
        raise DynconvError(f"{what} has classes {source.classes[:3]}... but the model was trained on "
                           f"{list(trained_on)[:3]}...: evaluate on data with the same class folders")


def evaluate_model(model, manifest: dict, source: DataSource, subsets: str | None,
                   device: torch.device, dataset: str | None = None) -> dict:
    """The report dict written as eval.json: model, image size, per-subset metrics and a summary. A model
    trained on a mixture is evaluated as on its dataset ``dataset`` (its channels, named as there, and its
    normalisation); with ``source`` a :class:`MixtureSource`, on every dataset (rows ``<dataset>:<subset>``)."""
    if isinstance(source, MixtureSource):
        return evaluate_mixture(evaluate_model, model, manifest, source, subsets, device)
    if manifest.get("datasets"):
        part = part_of(manifest, dataset_entry(manifest, dataset, source.num_channels), device)
        channels = part.channels
        parsed = parse_subsets(subsets, channels)
        rows = evaluate_subsets(model, source.epoch(0), part.model_transform, [part.to_model(s) for s in parsed],
                                manifest["channels"], manifest["image_size"], device)
        results = {subset_name(s, channels): row for s, row in zip(parsed, rows.values())}
        extra = {"dataset": part.name}
    else:
        channels = manifest["channels"]
        parsed = parse_subsets(subsets, channels)
        transform = BatchTransform(manifest["mean"], manifest["std"], device)
        results = evaluate_subsets(model, source.epoch(0), transform, parsed, channels, manifest["image_size"], device)
        extra = {}
    return {"model": manifest["model"], "image_size": manifest["image_size"], "channels": channels, **extra,
            "num_samples": source.num_samples, "subsets": results, "summary": summarize(results)}


class FinalEvaluation(Evaluator):
    """At the end of training: every configured subset of the validation set (accuracy, precision, recall,
    F1, MACs), written to ``run.dir/eval.{json,md,png}`` and put into the fit result for the hooks after it."""

    def __init__(self, manifest: dict, source: DataSource, subsets: str, device: torch.device, config_file: Path):
        self.manifest, self.source, self.subsets, self.device = manifest, source, subsets, device
        self.config_file = config_file

    def on_fit_end(self, result: FitResult) -> None:
        report = evaluate_model(result.module, self.manifest, self.source, self.subsets, self.device)
        report["checkpoint"] = str(result.final_checkpoint)
        report["training"] = {"epochs": result.epochs, **result.compute}  # its compute: recipes compare at equal compute
        run_dir = result.final_checkpoint.parent
        result.report = report
        rows = report["subsets"]
        figure = subset_figure([{"label": self.manifest["model"], "macs": {s: r["macs"] for s, r in rows.items()},
                                 "accuracy": {s: r["accuracy"] for s, r in rows.items()}}],
                               run_dir / EVAL_PNG, title=f"{run_dir.name}: accuracy per channel subset")["path"]
        result.files += write_reports(report, run_dir / EVAL_JSON, run_dir / EVAL_MD) + [figure, self.config_file]


def reference_rgb_accuracy(reference: str, data: str, batch_size: int, num_workers: int, device: str) -> float:
    """Full-channel accuracy of a reference: an ``eval.json`` report, or a checkpoint evaluated on ``data``."""
    ref = Path(reference)
    if ref.suffix == ".json":
        report = read_json(ref, "reference report")
        full = report.get("channels", "RGB")
        if full not in report.get("subsets", {}):
            raise DynconvError(f"reference report {ref} has no {full} row: evaluate the reference on all channels")
        return float(report["subsets"][full]["accuracy"])
    ckpt = load_checkpoint(ref)
    full = ckpt["dynconv"]["channels"]
    report = run_eval(reference, data, full, batch_size, num_workers, device=device)
    return float(report["subsets"][full]["accuracy"])


def run_eval(checkpoint: str, data: str, subsets: str | None = None, batch_size: int = 256,
             num_workers: int = 2, strict: bool = False, device: str = "auto",
             expect_model: str | None = None, reference: str | None = None, dataset: str | None = None) -> dict:
    """``dataset``: which dataset of a mixture-trained model ``data`` is (default: the only one with as many
    channels as ``data``)."""
    ckpt = load_checkpoint(checkpoint)
    manifest = ckpt["dynconv"]
    mixture = bool(manifest.get("datasets"))
    if dataset is not None and not mixture:
        raise DynconvError(f"--dataset {dataset} is for models trained on a mixture of datasets; {checkpoint} was "
                           f"trained on one ({manifest['channels']}): drop --dataset")
    if not mixture or dataset is not None:  # bad names fail before any data is read
        parse_subsets(subsets, dataset_entry(manifest, dataset)["channels"] if mixture else manifest["channels"])
    model = model_from_checkpoint(ckpt, checkpoint, expect_model)
    dev = resolve_device(device)
    source = build_source(Path(data), image_size=manifest["image_size"], batch_size=batch_size,
                          num_workers=num_workers, train=False, strict=strict)
    check_classes(source, manifest["model_kwargs"]["num_classes"], manifest.get("classes"), f"data {data}")
    full = dataset_entry(manifest, dataset, source.num_channels)["channels"] if mixture else manifest["channels"]
    if source.num_channels != num_channels(full):
        raise DynconvError(f"data {data} has {source.num_channels} channels, the model was trained on "
                           f"{num_channels(full)} ({full}){' for this dataset' if mixture else ''}")
    report = evaluate_model(model.to(dev), manifest, source, subsets, dev, dataset=dataset)
    report["checkpoint"] = str(checkpoint)
    if reference:
        if full not in report["subsets"]:
            raise DynconvError(f"--reference needs the {full} subset in --subsets to compute rgb_gap")
        ref_acc = reference_rgb_accuracy(reference, data, batch_size, num_workers, device)
        report["summary"]["rgb_gap"] = ref_acc - report["subsets"][full]["accuracy"]
        report["reference"] = {"path": str(reference), "accuracy": ref_acc}
    return report
