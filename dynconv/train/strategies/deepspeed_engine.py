"""DeepSpeed (ZeRO stages 0-3, optimizer/parameter offload) behind the :class:`Strategy` interface.

* The DeepSpeed config is derived from dynconv's (global batch, gradient accumulation, precision as
  DeepSpeed's ``torch_autocast`` with fp32 master weights, gradient clipping, ZeRO stage and offload) and
  merged over an optional JSON file; contradictions and keys DeepSpeed would silently ignore are errors.
* dynconv's own torch optimizer is handed to ``deepspeed.initialize``; the LR schedule stays dynconv's.
* Checkpoints are DeepSpeed's own folders (``engine.save_checkpoint``), written as ``.tmp-<name>`` and
  renamed once every process has finished and ``dynconv.json`` (manifest, epoch, step, world size) is in.
* :func:`consolidate` turns any such folder into plain fp32 weights (DeepSpeed's ``zero_to_fp32``).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ...batching import check_global_batch
from ...choices import OFFLOAD_DEVICES
from ...errors import DynconvError
from ...extras import require
from ...fields import param
from ...fileio import atomic_write_text, interrupts_deferred, read_json
from ..checkpoint import DS_SIDECAR, FORMAT_VERSION, read_deepspeed_sidecar, remove_checkpoint
from ..distributed import barrier
from .base import Strategy, prepare

DEFAULT_ZERO_STAGE = 2


@dataclass(frozen=True)
class DeepSpeedOptions:
    """The ``deepspeed:`` config section (the schema derives from these fields); ``None`` means "the JSON
    file's value, else dynconv's default"."""

    zero_stage: int | None = param(None, f"ZeRO stage (default {DEFAULT_ZERO_STAGE})", ge=0, le=3)
    offload_optimizer: Literal[*OFFLOAD_DEVICES] | None = param(None, "ZeRO-Offload of the optimizer state")
    offload_param: Literal[*OFFLOAD_DEVICES] | None = param(None, "parameter offload (ZeRO-3 only)")
    config: str | None = param(None, "a DeepSpeed JSON merged with what dynconv derives (batch, accumulation, "
                                     "precision)")
# keys dynconv derives, and the dynconv setting each one comes from
DERIVED_FROM = {"train_batch_size": "train.batch_size (x dropout.n_subsets with dropout.kind=sandwich)",
                "train_micro_batch_size_per_gpu": "train.batch_size / (processes x train.grad_accum_steps)",
                "gradient_accumulation_steps": "train.grad_accum_steps (x dropout.n_subsets with dropout.kind=sandwich)",
                "gradient_clipping": "train.grad_clip",
                "torch_autocast": "train.precision"}
OWNED = {"optimizer": "dynconv builds the optimizer: use train.optimizer, train.lr, train.weight_decay",
         "scheduler": "dynconv schedules the learning rate: use train.scheduler",
         "fp16": "precision comes from train.precision (DeepSpeed's torch_autocast, fp32 master weights)",
         "bf16": "precision comes from train.precision (DeepSpeed's torch_autocast, fp32 master weights)"}
# read by deepspeed.initialize itself rather than by DeepSpeedConfig
READ_BY_INITIALIZE = {"sequence_parallel_size", "data_parallel_size", "tensor_parallel"}
AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
AUTOCAST_NAMES = {name: precision for precision, names in {
    "bf16": ("bf16", "bfloat16", "torch.bfloat16"), "fp16": ("fp16", "float16", "half", "torch.float16")}.items()
    for name in names}


def import_deepspeed(device: torch.device):
    """``import deepspeed`` with its CPU accelerator when training on the CPU (it must be chosen before
    the first import), and its INFO chatter off."""
    if device.type == "cpu" and "deepspeed" not in sys.modules:
        os.environ["DS_ACCELERATOR"] = "cpu"
    deepspeed = require("deepspeed")
    from deepspeed.accelerator import get_accelerator

    if device.type == "cpu" and get_accelerator().device_name() != "cpu":
        raise DynconvError(f"DeepSpeed is already set up for {get_accelerator().device_name()}, not the CPU: set "
                           "DS_ACCELERATOR=cpu before starting, or train on the accelerator")
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    return deepspeed


@contextlib.contextmanager
def _quiet(level: int = logging.ERROR):
    """DeepSpeed prints build notes and warns about dynconv's (deliberate) client optimizer: hide both."""
    loggers = [logging.getLogger(name) for name in ("DeepSpeed", "torch.utils.cpp_extension")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, lvl in zip(loggers, before):
            logger.setLevel(lvl)


# ---- the DeepSpeed config ----------------------------------------------------------------------------

def read_config_file(path: str | Path) -> dict:
    data = read_json(path, "deepspeed.config", "pass the path of a DeepSpeed JSON config")
    if not isinstance(data, dict):
        raise DynconvError(f"deepspeed.config {path} must hold a JSON object of DeepSpeed settings")
    return data


def _merge_choice(zero: dict, key: str, value: str | None, where: str, option: str) -> None:
    """``offload_optimizer``/``offload_param``: dynconv's none|cpu over the file's ``{"device": ...}``."""
    in_file = zero.get(key)
    file_device = in_file.get("device", "none") if isinstance(in_file, dict) else None
    if value is None:
        return
    if file_device is not None and file_device != value:
        raise DynconvError(f"{where} sets zero_optimization.{key}.device={file_device!r} but {option}={value}: "
                           "set it in one place")
    if value == "none":
        zero.pop(key, None)
    else:
        zero[key] = {**(in_file or {}), "device": value}


def derive_config(options: DeepSpeedOptions, *, global_batch: int, world: int, grad_accum_steps: int,
                  precision: str, grad_clip: float, passes: int = 1) -> dict:
    """The config handed to ``deepspeed.initialize``: the JSON file (if any) with dynconv's settings merged in.
    Each of a micro-batch's ``passes`` is one of DeepSpeed's micro-steps (its batch counts the images once per pass)."""
    where = f"deepspeed.config {options.config}"
    base = read_config_file(options.config) if options.config else {}
    for key, why in OWNED.items():
        value = base.get(key)
        if value is not None and not (key in ("fp16", "bf16") and isinstance(value, dict) and not value.get("enabled")):
            raise DynconvError(f"{where} sets '{key}': {why}; remove it from the file")
    derived = {"train_batch_size": global_batch * passes,
               "train_micro_batch_size_per_gpu": check_global_batch(global_batch, world, grad_accum_steps),
               "gradient_accumulation_steps": grad_accum_steps * passes,
               # always explicit: DeepSpeed 0.19 clips to 1.0 unless told otherwise, single/DDP do not clip
               "gradient_clipping": float(grad_clip)}
    for key, value in derived.items():
        if key in base and base[key] != value:
            raise DynconvError(f"{where} sets {key}={base[key]!r} but dynconv derives {value!r} from "
                               f"{DERIVED_FROM[key]}: remove it from the file (or change the dynconv setting)")
    autocast = dict(base.get("torch_autocast") or {})
    if autocast.get("enabled") and AUTOCAST_NAMES.get(str(autocast.get("dtype", "bfloat16"))) != precision:
        raise DynconvError(f"{where} sets torch_autocast with dtype {autocast.get('dtype', 'bfloat16')!r} but "
                           f"train.precision={precision}: set the precision with {DERIVED_FROM['torch_autocast']} only")
    if precision in AUTOCAST_DTYPES:
        derived["torch_autocast"] = {**autocast, "enabled": True, "dtype": AUTOCAST_DTYPES[precision]}
    zero = dict(base.get("zero_optimization") or {})
    if options.zero_stage is not None and "stage" in zero and zero["stage"] != options.zero_stage:
        raise DynconvError(f"{where} sets zero_optimization.stage={zero['stage']} but deepspeed.zero_stage="
                           f"{options.zero_stage}: set it in one place")
    zero["stage"] = options.zero_stage if options.zero_stage is not None else zero.get("stage", DEFAULT_ZERO_STAGE)
    _merge_choice(zero, "offload_optimizer", options.offload_optimizer, where, "deepspeed.offload_optimizer")
    _merge_choice(zero, "offload_param", options.offload_param, where, "deepspeed.offload_param")
    if "offload_optimizer" in zero and zero["stage"] == 0:
        raise DynconvError("deepspeed.offload_optimizer needs ZeRO: set deepspeed.zero_stage to 1, 2 or 3")
    if "offload_param" in zero and zero["stage"] != 3:
        raise DynconvError("deepspeed.offload_param needs deepspeed.zero_stage=3 (ZeRO-3 partitions the parameters)")
    # dynconv passes its own torch optimizer, also with offload (DeepSpeed would insist on its CPU Adam)
    config = {"steps_per_print": 2 ** 62, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
              **base, **derived, "zero_optimization": zero}
    return config


class _Recorder(dict):
    """A dict that notes every key looked up, to find the keys DeepSpeed never reads (typos it ignores)."""

    def __init__(self, *args, seen: set | None = None):
        super().__init__(*args)
        self.seen = set() if seen is None else seen  # shared with DeepSpeed's copy.copy of it

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.seen.add(key)
        return super().__contains__(key)


def validate_config(config: dict, where: str) -> None:
    """Parse ``config`` with DeepSpeed's own ``DeepSpeedConfig`` (needs ``deepspeed.comm`` initialised);
    any error, and any top-level key it never reads, is a one-line DynconvError."""
    from deepspeed.runtime.config import DeepSpeedConfig

    record = _Recorder(config)
    try:
        with _quiet():
            DeepSpeedConfig(record)
    except (AssertionError, ValueError, TypeError, KeyError) as e:
        if callable(getattr(e, "errors", None)):  # a pydantic ValidationError of one of DeepSpeed's sections
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise DynconvError(f"{where}: DeepSpeed rejects '{key}': {err['msg']}") from None
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise DynconvError(f"{where}: DeepSpeed rejects the config: {first[:200]}") from None
    unknown = sorted(set(config) - record.seen - READ_BY_INITIALIZE)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(record.seen), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see https://www.deepspeed.ai/docs/config-json/"
        raise DynconvError(f"{where}: unknown DeepSpeed key '{unknown[0]}' (DeepSpeed would ignore it): {hint}")


# ---- the strategy ------------------------------------------------------------------------------------

def _deepspeed_safe_globals() -> list:
    """The few DeepSpeed classes its checkpoints pickle (plain records: an enum, a dataclass, loss scalers)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler]


def check_safe_to_load(folder: Path) -> None:
    """DeepSpeed loads its files with ``torch.load(weights_only=False)``: first make sure every file of the
    folder loads without executing code (``weights_only=True`` allowing only DeepSpeed's own record classes;
    memory-mapped, so cheap). DeepSpeed is imported already (by the strategy, or by :func:`consolidate`)."""
    for f in sorted(folder.glob("*.pt")):
        try:
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any failure means: do not hand it to an unrestricted load
            raise DynconvError(f"{f} does not load as plain tensors and data ({str(e).splitlines()[0][:100]}): "
                               "refusing to load it") from None


class DeepSpeedStrategy(Strategy):
    name = "deepspeed"
    checkpoint_suffix = ""  # checkpoints are folders

    def __init__(self, *, global_batch: int, options: DeepSpeedOptions | None = None, **common):
        super().__init__(**common)
        options = options or DeepSpeedOptions()
        self.ds = import_deepspeed(self.device)
        with _quiet():  # wraps the process group dynconv created
            self.ds.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo",
                                     dist_init_required=False)
        self.config = derive_config(options, global_batch=global_batch, world=self.dist.world,
                                    grad_accum_steps=self.grad_accum_steps, precision=self.precision,
                                    grad_clip=self.grad_clip, passes=self.passes)
        validate_config(self.config, f"deepspeed.config {options.config}" if options.config
                        else "the DeepSpeed config")
        self.stage = int(self.config["zero_optimization"]["stage"])
        self.engine = None
        self._plain: nn.Module | None = None
        self._plain_step = -1  # engine.global_steps the plain copy was consolidated at

    def setup(self, model: nn.Module, optimizer, channels_last: bool = False, compile: bool = False) -> None:
        if self.stage == 3:  # ZeRO-3 partitions the weights: evaluate (and calibrate) a plain copy
            self._plain = copy.deepcopy(model)
        if channels_last:  # DeepSpeed broadcasts and flattens the weights through contiguous byte views
            warnings.warn("train.channels_last with DeepSpeed: inputs are channels_last, the weights stay contiguous "
                          "(DeepSpeed's flat parameter buffers need them so)", stacklevel=2)
        prepare(model, False, compile)
        with _quiet():
            self.engine, *_ = self.ds.initialize(model=model, optimizer=optimizer, config=self.config,
                                                 dist_init_required=False)
        self.model, self.module, self.optimizer = self.engine, self.engine.module, optimizer

    def describe(self) -> str:
        zero = self.config["zero_optimization"]
        offload = [f"{k.split('_')[1]} offload to {zero[k]['device']}" for k in ("offload_optimizer", "offload_param")
                   if k in zero]
        return (f"DeepSpeed ZeRO-{self.stage} over {self.dist.world} process(es) "
                f"({'nccl' if self.device.type == 'cuda' else 'gloo'}){', ' + ', '.join(offload) if offload else ''}")

    def autocast(self):
        return contextlib.nullcontext()  # the engine's forward autocasts (torch_autocast in the config)

    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed counts micro-steps itself: engine.step() after every backward, and it updates the weights
        # at the accumulation boundary only (backward divides by gradient_accumulation_steps, which counts passes:
        # a pass's weighted loss times the passes is what the base strategy's one-pass micro-step would see)
        self.engine.backward(loss * self.passes if self.passes > 1 else loss)
        self.engine.step()

    def step(self) -> None:
        """Nothing left to do: the last micro-step's ``engine.step()`` was the accumulation boundary."""

    def discard(self, done: int) -> None:
        """DeepSpeed cannot drop gradients it has already reduced: with ``done`` > 0 micro-batches
        accumulated, the rest of the step back-propagates an exactly-zero loss and the update uses those
        ``done`` micro-batches; with none, the step is skipped."""
        for _ in range(self.grad_accum_steps * self.passes - done if done else 0):
            self.backward(sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0)

    def save(self, state: dict, path: Path) -> Path:
        """Every process writes its shard into ``.tmp-<name>``; the main one adds ``dynconv.json`` and renames
        the folder to ``<name>`` (and points DeepSpeed's ``latest`` at it) only when all are done."""
        with interrupts_deferred():  # Ctrl+C waits until the checkpoint is complete
            return self._save(state, path)

    def _save(self, state: dict, path: Path) -> Path:
        final = Path(path).with_suffix("")
        folder, tmp = final.parent, final.parent / f".tmp-{final.name}"
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            remove_checkpoint(tmp)  # left by a killed run
        barrier()
        with _quiet():
            self.engine.save_checkpoint(str(folder), tag=tmp.name, client_state=state, save_latest=False)
        if self.is_main:
            record = {"format_version": FORMAT_VERSION, "dynconv": state["dynconv"], "epoch": state["epoch"],
                      "step": state.get("step"), "world_size": self.dist.world, "zero_stage": self.stage}
            for f in tmp.iterdir():  # durable before the rename makes them visible as a checkpoint
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            atomic_write_text(tmp / DS_SIDECAR, json.dumps(record))
            old = folder / f".tmp-{final.name}.old"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            remove_checkpoint(old)
            atomic_write_text(folder / "latest", final.name)
        barrier()
        return final

    def load(self, path: Path, ckpt: dict | None = None) -> dict:
        path = Path(path)
        if not path.is_dir():
            raise DynconvError(f"{path} is a checkpoint file of a single/DDP run: resume it with train.strategy=single "
                               "or ddp (DeepSpeed resumes from its own checkpoint folders)")
        record = read_deepspeed_sidecar(path)
        if record["world_size"] != self.dist.world or record["zero_stage"] != self.stage:
            raise DynconvError(f"{path} was written by ZeRO-{record['zero_stage']} over {record['world_size']} process(es), "
                               f"this run is ZeRO-{self.stage} over {self.dist.world}: resume with the same --nproc and "
                               f"deepspeed.zero_stage, or take its weights with 'dynconv export {path} OUT.pt'")
        check_safe_to_load(path)
        with _quiet():
            loaded, client = self.engine.load_checkpoint(str(path.parent), tag=path.name,
                                                         load_lr_scheduler_states=False)
        if loaded is None:
            raise DynconvError(f"DeepSpeed could not load the checkpoint {path}")
        return client

    def eval_module(self) -> nn.Module:
        if self.stage != 3:
            return self.module  # full fp32 weights on every process (ZeRO-1/2 gather them after each step)
        if self._plain_step == self.engine.global_steps:
            return self._plain  # unchanged since (and possibly calibrated after) the last consolidation
        from deepspeed.utils import safe_get_full_fp32_param

        state = self.module.state_dict()  # buffers are not partitioned
        for name, p in self.module.named_parameters():  # collective: every process takes part
            state[name] = safe_get_full_fp32_param(p).detach().float().cpu()
        self._plain.load_state_dict(state)
        self._plain_step = self.engine.global_steps
        return self._plain


# ---- export --------------------------------------------------------------------------------------------

def consolidate(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(dynconv.json record, fp32 state_dict)`` of a DeepSpeed checkpoint folder written by dynconv."""
    folder = Path(folder)
    record = read_deepspeed_sidecar(folder)
    if "deepspeed" not in sys.modules:
        import_deepspeed(torch.device("cpu"))  # consolidation runs on the CPU
    check_safe_to_load(folder)
    if any(folder.glob("*optim_states.pt")):  # ZeRO 1-3: the fp32 master weights are in the optimizer shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder.parent), tag=folder.name)
    else:  # ZeRO-0: the model states hold the whole (fp32) module
        states = torch.load(folder / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
        state = states["module"]
    return record, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
