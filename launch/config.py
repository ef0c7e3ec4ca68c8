"""The config schema (the only place that knows it), YAML loading and ``dotted.key=value`` overrides."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynconv.errors import DynconvError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AugmentConfig(_Section):
    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotation: float = Field(15.0, ge=0, le=180)
    perspective: float = Field(0.2, ge=0, le=1)
    perspective_p: float = Field(0.5, ge=0, le=1)
    # device: batched on the training device, draws from (seed, epoch, step); loader: per image inside
    # the data loader on the CPU (FFCV pipeline or torchvision workers), draws from (seed, epoch, sample)
    where: Literal["device", "loader"] = "device"


class DataConfig(_Section):
    train: str | None = None
    val: str | None = None
    image_size: int = Field(64, ge=8, le=4096)
    num_workers: int = Field(2, ge=0, le=256)
    channels: str = "RGB"
    backend: Literal["auto", "ffcv", "torchvision"] = "auto"
    strict: bool = False
    os_cache: bool = True          # FFCV: rely on the OS page cache (False: FFCV's own in-memory cache)
    order: Literal["random", "quasi_random"] = "random"  # training order; quasi_random: FFCV, larger-than-RAM
    drop_last: bool = True         # training: drop the last partial batch
    mean: list[float] | None = None
    std: list[float] | None = None
    augment: AugmentConfig = AugmentConfig()


class ModelConfig(_Section):
    name: str = "dynamic_resnet18"
    num_classes: int = Field(10, ge=2)
    # None = the model's own default (dynamic_* models: prefix stem; torchvision stem preset)
    stem_mode: Literal["prefix", "slice", "template_mixing", "hypernet", "depthwise"] | None = None
    stem: Literal["torchvision", "study"] | None = None
    stem_rescale: bool | None = None
    norm: Literal["shared", "recalibrate", "switchable", "group"] | None = None
    switchable_stages: int | None = Field(None, ge=0)
    switchable_affine: bool | None = None
    calibration_batches: int = Field(20, ge=1)  # training batches per subset for norm=recalibrate


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)          # global: images per optimiser step, over processes and micro-steps
    lr: float = Field(0.05, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    scheduler: Literal["cosine", "constant", "step", "onecycle"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)        # linear LR warm-up before the schedule
    step_size: int = Field(30, ge=1)           # scheduler=step: epochs between decays
    gamma: float = Field(0.1, gt=0, le=1)      # scheduler=step: decay factor
    pct_start: float = Field(0.3, gt=0, lt=1)  # scheduler=onecycle: fraction of the steps spent rising
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    seed: int = 0
    device: str = "auto"
    # auto: single for one process, ddp for several (WORLD_SIZE); deepspeed: see the deepspeed section
    strategy: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    grad_accum_steps: int = Field(1, ge=1)     # micro-batches (of batch_size / processes / this) per step
    grad_clip: float = Field(0.0, ge=0)        # clip the gradient norm to this (0: off)
    compile: bool = False                      # torch.compile the model (nn.Module.compile, in place)
    res_start: int | None = Field(None, ge=8, le=4096)  # progressive resizing: resolution of epoch 1 (None: off)
    res_end: int | None = Field(None, ge=8, le=4096)    # ... reached after res_ramp_epochs (None: data.image_size)
    res_ramp_epochs: int | None = Field(None, ge=1)     # ... epochs of the ramp (None: train.epochs - 1)
    resume: str | None = None
    keep_checkpoints: int = Field(2, ge=1)
    max_bad_steps: int = Field(0, ge=0)        # NaN/Inf losses to skip before stopping (0: stop at the first)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    every_steps: int = Field(0, ge=0)  # mid-epoch checkpoints every N optimiser steps (0: at epoch ends only)
    channels_last: bool = False


class DeepSpeedSection(_Section):
    """Used with train.strategy=deepspeed; unset keys take the JSON file's value, else the default."""

    zero_stage: int | None = Field(None, ge=0, le=3)                 # default 2
    offload_optimizer: Literal["none", "cpu"] | None = None          # ZeRO-Offload of the optimizer state
    offload_param: Literal["none", "cpu"] | None = None              # ZeRO-3 only
    config: str | None = None  # DeepSpeed JSON merged with what dynconv derives (batch, accumulation, precision)


class DropoutConfig(_Section):
    kind: Literal["none", "constant", "uniform_subsets", "weighted_subsets"] = "uniform_subsets"
    p: float = Field(0.5, ge=0, lt=1)              # constant: drop probability per channel
    weights: dict[str, float] = {}                  # weighted_subsets: weight per subset name, e.g. {RGB: 2, R: 1}
    curriculum: Literal["none", "linear", "cosine", "step"] = "none"
    ramp_epochs: int = Field(1, ge=1)               # curriculum: epochs from full input to the base distribution
    steps: int = Field(4, ge=1)                     # curriculum=step: number of steps


class EvalConfig(_Section):
    subsets: str = "all"
    batch_size: int = Field(256, ge=1)
    every_epoch: bool = False  # also score eval.subsets every epoch: val_acc_<subset>, val_{mean,worst}_subset_acc


class RunConfig(_Section):
    dir: str = "runs/default"
    name: str | None = None
    tags: dict[str, str] = {}  # MLflow run tags, e.g. run.tags.study=dynamic for `dynconv report --study`


class TrackingConfig(_Section):
    enabled: bool = True
    uri: str | None = None
    experiment: str = "dynconv"


class Config(_Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    dropout: DropoutConfig = DropoutConfig()
    eval: EvalConfig = EvalConfig()
    run: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()


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
    close = difflib.get_close_matches(key, _known_keys(), n=1)
    hint = f"did you mean '{close[0]}'?" if close else "see launch/configs/demo.yaml for the valid keys"
    return f"unknown config key '{key}': {hint}"


def _explain(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        return unknown_key_message(key)
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
        path = Path(path)
        if not path.is_file():
            raise DynconvError(f"config file {path} does not exist: pass a YAML file such as launch/configs/demo.yaml")
        try:
            base = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise DynconvError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(base, dict):
            raise DynconvError(f"config file {path} must hold a mapping of sections (data:, model:, train:, ...)")
    try:
        merged = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(base), parse_overrides(list(overrides))))
    except OmegaConfBaseException as e:  # e.g. a section overridden by a scalar, or a scalar by a mapping
        raise DynconvError(f"cannot apply overrides {list(overrides)}: {str(e).splitlines()[0]}") from None
    return validate_config(merged)


def validate_config(data: dict) -> Config:
    """A nested mapping of sections -> :class:`Config`; an unknown key or bad value is a one-line DynconvError."""
    try:
        return Config.model_validate(data)
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
