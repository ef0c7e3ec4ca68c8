"""The config schema (the only place that knows it), YAML loading and ``dotted.key=value`` overrides."""
from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from dynconv.batching import check_global_batch
from dynconv.channels import num_channels, parse_subsets, subsets_within, validate_channels
from dynconv.choices import (AUGMENT_WHERE, CURRICULA, DATA_BACKENDS, DATA_ORDERS, DECODERS, DROPOUT_KINDS,
                             LR_SCHEDULES, NORM_MODES, OPTIMIZERS, PRECISIONS, STEM_MODES, STEM_PRESETS, STRATEGIES)
from dynconv.data.augment import AugmentParams
from dynconv.data.mixture import vocabulary
from dynconv.errors import DynconvError
from dynconv.fileio import read_yaml
from dynconv.train.strategies.deepspeed_engine import DeepSpeedOptions


def D(default, doc: str, **bounds):  # noqa: N802 - a field with its meaning, for `dynconv train --help`
    return Field(default, description=doc, **bounds)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def section_from(options: type, name: str, **extra) -> type[_Section]:
    """A config section with the fields of a library dataclass (types, defaults, bounds and docs from its
    ``dynconv.fields.param`` metadata) plus ``extra`` fields (``name=(type, Field(...))``)."""
    hints = get_type_hints(options)
    fields = {}
    for f in dataclasses.fields(options):
        bounds = {k: v for k, v in f.metadata.items() if k in ("ge", "le", "gt", "lt")}
        fields[f.name] = (hints[f.name], Field(f.default, description=f.metadata.get("doc"), **bounds))
    return create_model(name, __base__=_Section, **extra, **fields)


AugmentConfig = section_from(
    AugmentParams, "AugmentConfig", enabled=(bool, D(True, "the study's flips, rotation and perspective")),
    # device: batched on the training device, draws from (seed, epoch, step); loader: per image inside
    # the data loader on the CPU (FFCV pipeline or torchvision workers), draws from (seed, epoch, sample);
    # auto: loader when training on the CPU (4-8x faster there), device on a GPU (the CPU keeps decoding)
    where=(Literal[*AUGMENT_WHERE], D("auto", "where augmentation runs: auto = loader on a CPU, device on a GPU")))


class DatasetEntry(_Section):
    """One dataset of a mixture (``data.train`` as a list)."""

    name: str | None = D(None, "the dataset's name in metrics and reports (default: its channels)")
    path: str = D(..., "training images: an image folder or a .beton file")
    val: str = D(..., "validation images, likewise")
    channels: str = D("RGB", "its channel names (letters, or a list); a name shared with another dataset is the "
                      "same input channel of the model")
    mean: list[float] | Literal["auto"] | None = D(None, "per-channel mean (default as data.mean; auto: its training set's)")
    std: list[float] | Literal["auto"] | None = D(None, "per-channel std, likewise")

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_names(cls, value):
        return validate_channels(value) if isinstance(value, (str, list, tuple)) else value

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
            raise ValueError(f"dataset name {value!r} must be letters, digits, _ . - (it names metrics)")
        return value

    @model_validator(mode="after")
    def _per_channel_stats(self):
        check_stats_length(self, self.channels, f"data.train[{self.name or self.channels}]")
        return self

    @property
    def label(self) -> str:
        return self.name or self.channels


def check_stats_length(section, channels: str, where: str) -> None:
    for key in ("mean", "std"):
        values = getattr(section, key)
        if isinstance(values, list) and len(values) != num_channels(channels):
            raise ValueError(f"{where}.{key} needs one value per channel of {channels!r}, got {len(values)}")


class DataConfig(_Section):
    train: str | list[DatasetEntry] | None = D(None, "training images: an image folder (root/<class>/<image>) or a "
                                              ".beton file; or a mixture, a list of {name, path, val, channels, "
                                              "mean, std} (docs/data.md)")
    val: str | None = D(None, "validation images, likewise (a mixture: each dataset's val)")
    image_size: int = D(64, "side of the square images the model sees", ge=8, le=4096)
    num_workers: int = D(2, "loader workers (FFCV: threads; torchvision: processes)", ge=0, le=256)
    channels: str = D("RGB", "the data set's channel names: letters (RGB; RGBUV for 5-channel arrays) or a list "
                      "([DNA, ER, RNA, AGP, Mito], stored as DNA-ER-RNA-AGP-Mito)")
    backend: Literal[*DATA_BACKENDS] = D("auto", "auto: FFCV for .beton files, torchvision for folders")
    strict: bool = D(False, "unreadable image files are an error instead of being skipped")
    os_cache: bool = D(True, "FFCV: rely on the OS page cache (false: FFCV's own in-memory cache)")
    order: Literal[*DATA_ORDERS] = D("random", "training order; quasi_random: FFCV, for data larger than memory")
    drop_last: bool = D(True, "training: drop the last partial batch")
    decoder: Literal[*DECODERS] = D("center_crop", "FFCV training images: centre crop, or random resized crop "
                                    "(FFCV's ImageNet recipe; validation always centre-crops)")
    mean: list[float] | Literal["auto"] | None = D(None, "per-channel mean for normalisation (default: ImageNet's "
                                                   "for RGB, 0.5 otherwise; auto: the training set's)")
    std: list[float] | Literal["auto"] | None = D(None, "per-channel std, likewise (0.25 otherwise)")
    augment: AugmentConfig = AugmentConfig()

    @field_validator("channels", mode="before")
    @classmethod
    def _channel_names(cls, value):
        return validate_channels(value) if isinstance(value, (str, list, tuple)) else value

    @model_validator(mode="after")
    def _per_channel_stats(self):
        if isinstance(self.train, list):
            self._mixture()
        check_stats_length(self, self.channels, "data")
        return self

    def _mixture(self) -> None:
        """A mixture: named datasets, no shared val/mean/std; data.channels (the model's vocabulary) becomes the
        union of theirs, after any names it gives (a vocabulary may hold channels of datasets still to come)."""
        if not self.train:
            raise ValueError("data.train is an empty list: give one or more datasets {path, val, channels}")
        labels = [e.label for e in self.train]
        if len(set(labels)) != len(labels):
            raise ValueError(f"data.train has two datasets called {next(x for x in labels if labels.count(x) > 1)!r}: "
                             "give each a distinct name")
        for key in ("val", "mean", "std"):
            if getattr(self, key) is not None:
                raise ValueError(f"data.{key} is set but data.train is a list of datasets: set {key} per dataset")
        given = [self.channels] if "channels" in self.model_fields_set else []  # its names first, in its order
        self.channels = vocabulary(given + [e.channels for e in self.train])

    @property
    def mixture(self) -> list[DatasetEntry]:
        """The datasets of a mixture; ``[]`` for one dataset."""
        return self.train if isinstance(self.train, list) else []


class ModelConfig(_Section):
    name: str = D("dynamic_resnet18", "a registered model: dynamic_resnet18/34 (channel-adaptive), resnet18/34, ran2")
    num_classes: int = D(10, "classes of the data set", ge=2)
    stem_mode: Literal[*STEM_MODES] | None = D(None, "channel-adaptive first conv (dynamic_* models; default prefix)")
    stem: Literal[*STEM_PRESETS] | None = D(None, "stem geometry: torchvision 7x7/2 (default) or the study's 7x7/1")
    stem_rescale: bool | None = D(None, "slice stem: scale by C/k when channels are missing")
    stem_args: dict[str, int | float | str] | None = D(None, "the stem mode's own settings, e.g. model.stem_args.num_templates=8 (docs/models.md)")
    norm: Literal[*NORM_MODES] | None = D(None, "normalisation: shared BatchNorm, per-subset statistics, GroupNorm (with train.grad_clip)")
    switchable_stages: int | None = D(None, "norm=switchable: only the stem's norm and the first N stages", ge=0)
    switchable_affine: bool | None = D(None, "norm=switchable: per-subset gamma/beta too")
    fill_rescale: bool | None = D(None, "plain models: scale the present channels by C/k (absent ones are zeros)")
    width: int | None = D(None, "channels of the first stage (default 64, the published networks; the stages "
                          "widen from it): smaller is quicker to try", ge=4, le=1024)
    pretrained: str | None = D(None, "start a ResNet from torchvision's ImageNet weights (torchvision, cached in "
                                     "$TORCH_HOME) or a state-dict FILE in torchvision's format (docs/models.md)")

    @model_validator(mode="after")
    def _pretrainable(self):
        if self.pretrained is not None and not re.fullmatch(r"(dynamic_)?resnet(18|34)", self.name):
            raise ValueError(f"model.pretrained starts a ResNet (resnet18/34, dynamic_resnet18/34) from torchvision's "
                             f"weights; {self.name} has none: unset model.pretrained")
        return self

    def builder_kwargs(self, in_chans: int) -> tuple[dict, dict]:
        """(every argument the model's builder is called with, defaults resolved: what the checkpoint and MLflow
        record; the keys set here that this model does not take, e.g. a stem_mode for a plain resnet18)."""
        from dynconv.models import model_options, resolve_model_kwargs

        given = {k: v for k, v in self.model_dump(exclude={"name", "pretrained"}).items() if v is not None}
        accepted = model_options(self.name)
        ignored = {k: v for k, v in given.items() if k not in accepted}
        kwargs = {k: v for k, v in given.items() if k in accepted}
        return resolve_model_kwargs(self.name, **kwargs, in_chans=in_chans), ignored


class TrainConfig(_Section):
    epochs: int = D(10, "epochs to train", ge=1)
    batch_size: int = D(64, "global: images per optimiser step, over processes and micro-steps", ge=1)
    lr: float = D(0.05, "base learning rate", gt=0)
    optimizer: Literal[*OPTIMIZERS] = D("sgd", "sgd (Nesterov momentum) or adamw; no weight decay on norms and biases")
    scheduler: Literal[*LR_SCHEDULES] = D("cosine", "learning-rate schedule")
    warmup_epochs: int = D(0, "linear warm-up epochs before the schedule", ge=0)
    step_size: int = D(30, "scheduler=step: epochs between decays", ge=1)
    gamma: float = D(0.1, "scheduler=step: decay factor", gt=0, le=1)
    pct_start: float = D(0.3, "scheduler=onecycle: fraction of the steps spent rising", gt=0, lt=1)
    cycle_momentum: bool = D(True, "scheduler=onecycle: cycle the momentum inversely to the rate (torch's)")
    base_momentum: float = D(0.85, "scheduler=onecycle: the low end of the momentum cycle", ge=0, lt=1)
    momentum: float = D(0.9, "SGD momentum (AdamW: beta1)", ge=0, lt=1)
    weight_decay: float = D(5e-4, "weight decay (not on norms and biases)", ge=0)
    label_smoothing: float = D(0.0, "label smoothing of the cross-entropy", ge=0, lt=1)
    seed: int = D(0, "seeds weights, data order, augmentation and channel dropout")
    device: str = D("auto", "auto, cpu, cuda or cuda:N")
    strategy: Literal["auto", *STRATEGIES] = D("auto", "auto: single for one process, ddp for several (WORLD_SIZE)")
    grad_accum_steps: int = D(1, "micro-batches (of batch_size / processes / this) per optimiser step", ge=1)
    grad_clip: float = D(0.0, "clip the global gradient norm to this (0: off)", ge=0)
    compile: bool = D(False, "torch.compile the model (in place; weights keep their names)")
    res_start: int | None = D(None, "progressive resizing: resolution of epoch 1 (unset: off)", ge=8, le=4096)
    res_end: int | None = D(None, "progressive resizing: final resolution (unset: data.image_size)", ge=8, le=4096)
    res_ramp_epochs: int | None = D(None, "progressive resizing: epochs of the ramp (unset: epochs - 1)", ge=1)
    resume: str | None = D(None, "auto: continue run.dir from its newest checkpoint; or a checkpoint path")
    keep_checkpoints: int = D(2, "epoch checkpoints kept in run.dir/checkpoints", ge=1)
    max_bad_steps: int = D(0, "NaN/Inf losses to skip before stopping (0: stop at the first)", ge=0)
    precision: Literal[*PRECISIONS] = D("fp32", "autocast precision")
    every_steps: int = D(0, "also checkpoint every N optimiser steps within an epoch (0: epoch ends only)", ge=0)
    log_every_steps: int = D(50, "a progress line every N steps: step, loss, images/s, time left (0: off)", ge=0)
    channels_last: bool = D(False, "channels_last memory format (faster convolutions on GPUs)")
    teacher: str | None = D(None, "distil from this checkpoint of the same channels, classes and normalisation "
                                  "(it sees every channel, the student the step's subset)")
    distill_alpha: float = D(0.5, "weight of the soft-target loss (1 - alpha: the labels' cross-entropy)", ge=0, le=1)
    distill_temperature: float = D(2.0, "T of the soft targets: both models' logits divided by T, the loss "
                                        "scaled by T²", gt=0)
    inplace_distill: bool = D(False, "dropout.kind=sandwich: the subsets' passes learn from the full input's "
                                     "predictions (detached; the full input from the labels), as US-Nets do")
    inplace_temperature: float = D(1.0, "inplace_distill: T of the full input's soft targets, as "
                                        "train.distill_temperature", gt=0)
    ema_decay: float = D(0.0, "exponential moving average of the weights (and BatchNorm statistics) after every "
                              "optimiser step, e.g. 0.999, warmed up over the first steps (0: off)", ge=0, lt=1)
    ema_final: bool = D(True, "with ema_decay: validate, calibrate and evaluate the average and write it as "
                              "model.pt (false: the live weights; the other one's val_acc is logged as "
                              "val_acc_live / val_acc_ema)")

    @model_validator(mode="after")
    def _consistent(self):
        check_global_batch(self.batch_size, 1, self.grad_accum_steps)
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(f"train.warmup_epochs={self.warmup_epochs} must be smaller than train.epochs={self.epochs}")
        if self.scheduler == "onecycle" and self.warmup_epochs:
            raise ValueError("train.scheduler=onecycle has its own warm-up (train.pct_start): set train.warmup_epochs=0")
        if self.scheduler == "onecycle" and self.cycle_momentum and self.momentum and not self.base_momentum < self.momentum:
            raise ValueError(f"train.base_momentum={self.base_momentum} must be below train.momentum={self.momentum} "
                             "(onecycle cycles between them), or set train.cycle_momentum=false")
        if self.teacher is not None and self.distill_alpha == 0:
            raise ValueError("train.teacher is set but train.distill_alpha=0: the teacher would not be used")
        if self.res_start is None and (self.res_end is not None or self.res_ramp_epochs is not None):
            raise ValueError("train.res_end / train.res_ramp_epochs need train.res_start (the first epoch's resolution)")
        return self


# Used with train.strategy=deepspeed; unset keys take the JSON file's value, else the default.
DeepSpeedSection = section_from(DeepSpeedOptions, "DeepSpeedSection")


class DropoutConfig(_Section):
    kind: Literal[*DROPOUT_KINDS] = D("uniform_subsets", "which channel subset each training step sees")
    p: float = D(0.5, "kind=constant: drop probability of each channel", ge=0, lt=1)
    weights: dict[str, float] = D({}, "kind=weighted_subsets: weight per subset name, e.g. {RGB: 2, R: 1}")
    curriculum: Literal[*CURRICULA] = D("none", "move from full input to the distribution over ramp_epochs")
    ramp_epochs: int = D(1, "curriculum: epochs from full input to the distribution", ge=1)
    steps: int = D(4, "curriculum=step: number of steps", ge=1)
    n_subsets: int = D(4, "kind=sandwich: passes per step (the full input, a single channel, n_subsets - 2 drawn)",
                       ge=2)
    full_weight: float = D(1.0, "kind=sandwich: the full input's loss weight (each other pass: 1)", gt=0)

    @model_validator(mode="after")
    def _sandwich(self):
        if self.kind == "sandwich" and self.curriculum != "none":
            raise ValueError(f"dropout.kind=sandwich sees the full input on every step: drop dropout.curriculum="
                             f"{self.curriculum}")
        return self

    @property
    def passes(self) -> int:
        """Forward/backward passes per micro-batch."""
        return self.n_subsets if self.kind == "sandwich" else 1


class EvalConfig(_Section):
    subsets: str = D("all", "subsets to evaluate: all, or e.g. RGB,RG,R")
    batch_size: int = D(256, "evaluation batch size", ge=1)
    every_epoch: bool | Literal["auto"] = D("auto", "also score eval.subsets every epoch (val_acc_<subset>, mean, "
                                             "worst); auto: when that costs at most one epoch's images")
    table_every: int = D(0, "with per-epoch subset scores: print them as a table every N epochs (0: only the "
                            "final evaluation's table)", ge=0)


class CalibrationConfig(_Section):
    """Per-subset normalisation statistics (model.norm=recalibrate|switchable), measured on the weights being
    evaluated: before each validation and before the final checkpoint."""

    enabled: bool = D(True, "measure per-subset statistics before each validation and the final checkpoint "
                            "(model.norm=recalibrate|switchable)")
    batches: int = D(20, "training batches per subset for the final statistics (also the last epoch's validation)",
                     ge=1)
    epoch_batches: int = D(1, "training batches per subset before each earlier validation "
                              "(bench/calibration_noise.py: 1 vs 2 moves the read-outs by 1.2 vs 1.0 points)", ge=1)


class RunConfig(_Section):
    dir: str = D("runs/default", "run folder: checkpoints, config.yaml, eval.json, model.pt")
    name: str | None = D(None, "MLflow run name (default: the folder's name)")
    tags: dict[str, str] = D({}, "MLflow run tags, e.g. run.tags.study=dynamic for dynconv report --study")


class TrackingConfig(_Section):
    enabled: bool = D(True, "log to MLflow")
    uri: str | None = D(None, "tracking URI (default sqlite:///<parent of run.dir>/mlruns.db)")
    experiment: str = D("dynconv", "MLflow experiment name")
    log_model: bool = D(True, "log the trained model as an MLflow logged model, its final per-subset metrics "
                              "linked to it (the experiment's Models tab; dynconv eval models:/...)")
    register_as: str | None = D(None, "also register the logged model under this name in the model registry "
                                      "(a new version each run: models:/NAME/VERSION)")
    wait_s: float = D(120.0, "how long a run waits at its start for a tracking server that does not answer "
                             "(restarting), in seconds; later records are buffered instead", ge=0)


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    dropout: DropoutConfig = DropoutConfig()
    eval: EvalConfig = EvalConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _across_sections(self):
        if self.data.mixture:
            self._mixture_settings()
        else:
            parse_subsets(self.eval.subsets, self.data.channels)  # letters of data.channels
        t = self.train
        end = t.res_end or self.data.image_size
        if t.res_start is not None and max(t.res_start, end) > self.data.image_size:
            raise ValueError(f"train.res_start/res_end ({t.res_start}, {end}) must not exceed data.image_size="
                             f"{self.data.image_size}: batches are loaded at data.image_size and resized on the device")
        if t.inplace_distill and self.dropout.kind != "sandwich":
            raise ValueError("train.inplace_distill teaches the subsets from the full input of the same step: set "
                             "dropout.kind=sandwich")
        if t.inplace_distill and t.teacher is not None:
            raise ValueError("train.inplace_distill and train.teacher both set the subsets' targets: choose one")
        given = sorted(k for k, v in self.deepspeed.model_dump().items() if v is not None)  # None: unset
        if given and t.strategy != "deepspeed":
            raise ValueError(f"deepspeed.{given[0]} is set but train.strategy={t.strategy}: "
                             "set train.strategy=deepspeed, or drop the deepspeed section")
        return self


    def _mixture_settings(self) -> None:
        sets = [e.channels for e in self.data.mixture]
        for name in self.eval.subsets.split(",") if self.eval.subsets.strip().lower() != "all" else []:
            if not any(subsets_within(name, c) for c in sets):
                raise ValueError(f"eval.subsets names {name.strip()!r}, a subset of no dataset of data.train "
                                 f"({', '.join(sets)}): use the channel names of a dataset")
        if self.model.builder_kwargs(num_channels(self.data.channels))[0].get("stem_mode") == "prefix":
            raise ValueError("a mixture of datasets shares channels by name, but model.stem_mode=prefix (the default "
                             "of dynamic_* models) ignores which channel is which: set model.stem_mode=slice (or "
                             "template_mixing, hypernet, depthwise, target)")
        if self.train.teacher is not None:
            raise ValueError("train.teacher is not supported with a mixture of datasets (data.train as a list) yet")


def _known_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _known_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def unknown_key_message(key: str) -> str:
    """One line with the nearest valid key, by section first: a mistyped section ('trian.epochs' ->
    'train.epochs'), then the nearest name within the section, then the nearest key anywhere."""
    keys = _known_keys()
    section, _, rest = key.partition(".")
    sections = list(dict.fromkeys(k.split(".")[0] for k in keys))
    if rest and section not in sections:
        section = next(iter(difflib.get_close_matches(section, sections, n=1)), section)
    names = [k[len(section) + 1:] for k in keys if k.startswith(section + ".")]
    near = difflib.get_close_matches(rest, names, n=1) if rest else []
    close = [f"{section}.{near[0]}"] if near else [] if names else difflib.get_close_matches(key, keys, n=1)
    hint = f"did you mean '{close[0]}'?" if close else "'dynconv train --help' lists the valid keys"
    return f"unknown config key '{key}': {hint}"


def _type_text(annotation) -> str:
    """``Literal['a', 'b'] | None`` -> ``a|b|null``, for the key table."""
    args = [a for a in get_args(annotation)] if get_origin(annotation) in (Union, types.UnionType) else [annotation]
    parts = []
    for a in args:
        if a is type(None):
            parts.append("null")
        elif get_origin(a) is Literal:
            parts.append("|".join(map(str, get_args(a))))
        elif get_origin(a) in (list, dict):
            parts.append(getattr(get_origin(a), "__name__", str(a)))
        else:
            parts.append(getattr(a, "__name__", str(a)))
    return "|".join(parts)


def key_table(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type and bounds, default, meaning) of every config key, in schema order — generated from
    the schema, so ``dynconv train --help`` cannot go stale."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows += key_table(ann, f"{prefix}{name}.")
            continue
        bounds = [f"{op}{getattr(m, attr)}" for m in f.metadata
                  for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if hasattr(m, attr)]
        typ = _type_text(ann) + (f" ({', '.join(bounds)})" if bounds else "")
        default = "null" if f.default is None else str(f.default).lower() if isinstance(f.default, bool) else str(f.default)
        rows.append((prefix + name, typ, default, f.description or ""))
    return rows


def _union_branch(part) -> bool:
    """A location part that names which type of a union pydantic tried (``str``, ``list[DatasetEntry]``)."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or part[:1].isupper())


def _explain(err: ValidationError) -> str:
    # of a union's failed branches, the deepest is the one the value was meant for (a list of datasets
    # with a bad entry, not "should be a string")
    e = max(err.errors(), key=lambda e: len(e["loc"]))
    key = ".".join(str(p) for p in e["loc"] if not _union_branch(p))
    if e["type"] == "extra_forbidden":
        value = e.get("input")
        while isinstance(value, dict) and len(value) == 1:  # a mistyped section: name its key too ('trian.epochs')
            name, value = next(iter(value.items()))
            key = f"{key}.{name}"
        return unknown_key_message(key)
    if e["type"] == "value_error":  # a check across keys (the message names them)
        return e["msg"].removeprefix("Value error, ")
    return f"config key '{key}': {e['msg']} (got {e.get('input')!r})"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or not key or key.startswith(".") or key.endswith("."):
            raise DynconvError(f"override {item!r} is not of the form dotted.key=value (e.g. train.epochs=5)")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except (OmegaConfBaseException, yaml.YAMLError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DynconvError(f"cannot parse overrides {overrides}: {first} (quote values with YAML syntax)") from None


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML file <- overrides; any unknown key or bad value is a one-line DynconvError."""
    base: dict = {}
    if path is not None:
        base = read_yaml(path, "config file", "pass a YAML file such as launch/configs/demo.yaml") or {}
        if not isinstance(base, dict):
            raise DynconvError(f"config file {path} must hold a mapping of sections (data:, model:, train:, ...)")
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), parse_overrides(list(overrides))))
    except OmegaConfBaseException as e:  # e.g. a section overridden by a scalar, or a scalar by a mapping
        raise DynconvError(f"cannot apply overrides {list(overrides)}: {str(e).splitlines()[0]}") from None
    return validate_config(merged)


# keys that moved: old name -> new name (configs, sweeps and run folders written before still load)
MOVED_KEYS = {"model.calibrate": "calibration.enabled", "model.calibration_batches": "calibration.batches",
              "eval.calibration_batches": "calibration.epoch_batches"}


def _moved(data: dict) -> dict:
    """``data`` with keys of :data:`MOVED_KEYS` under their new names (a warning names each)."""
    import copy
    import warnings

    data = copy.deepcopy(data)
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            new_section, new_key = new.split(".")
            if not isinstance(data.get(new_section), dict):
                data[new_section] = {}
            data[new_section].setdefault(new_key, value)
            warnings.warn(f"config key {old} is now {new}: please rename it", stacklevel=3)
    return data


def validate_config(data: dict) -> Config:
    """A nested mapping of sections -> :class:`Config`; an unknown key or bad value is a one-line DynconvError."""
    try:
        return Config.model_validate(_moved(data))
    except ValidationError as e:
        raise DynconvError(_explain(e)) from None


def known_keys() -> list[str]:
    """Every dotted config key, e.g. ``train.lr``, ``dropout.weights``."""
    return _known_keys()


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"train.lr": 0.05, ...}`` for tracking params."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                out[prefix + k] = v

    walk(cfg.model_dump(), "")
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(), sort_keys=False)


class ConfigSchema:
    """The schema as the layers below the application see it (``dynconv.sweeps``): plain mappings in and out,
    one-line :class:`DynconvError` for a bad key or value. Stateless, so it pickles to any process."""

    def keys(self) -> list[str]:
        """Every dotted config key, e.g. ``train.lr``."""
        return known_keys()

    def unknown_key_message(self, key: str) -> str:
        return unknown_key_message(key)

    def validate(self, data: dict) -> dict:
        """The complete config (every key, defaults filled in) of the nested mapping ``data``."""
        return validate_config(data).model_dump()


SCHEMA = ConfigSchema()
