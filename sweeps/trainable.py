"""The Ray Tune trainable: one trial is one normal training (``TrialSetup.train``, the application's
training entry point, handed over by the caller) with the trial's values set.

Each trial trains in its own ``run.dir`` (``<sweep>/trials/<trial id>``) with ``eval.every_epoch=true`` and
``train.resume=auto``, with the trial's tags (its own MLflow run, a child of the sweep's, is the training's
business), and reports every epoch to Tune through a trainer :class:`Hook` — with the trainer's epoch
checkpoint attached, so that PBT can copy a strong trial's weights into a weak one. A trial restored from a
checkpoint (PBT's exploit, ``--resume``) puts that checkpoint into its run folder and lets the trainer resume
exactly from it.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dynconv.fileio import atomic_write_text
from dynconv.metric_names import MEAN_SUBSET_ACC, TRAIN_LOSS, VAL, WORST_SUBSET_ACC, flat_metrics
from dynconv.run_files import SWEEP_TRIAL, TRAIN_LOG
from dynconv.train import Callback, FitResult, StoppedEarly, atomic_torch_save, latest_checkpoint, load_checkpoint
from dynconv.train.checkpoint import epoch_checkpoint

from .space import plain, with_params

CKPT_FILE = "trainer.pt"               # in a Tune checkpoint folder: the trainer's epoch checkpoint
CKPT_META = "sweep_checkpoint.json"    # ... and which trial wrote it, at which epoch


def tune_metrics(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
    """The trainer's per-epoch names -> the sweep's: ``train_loss`` -> ``loss``, ``val_acc_RG`` -> ``acc_RG``,
    ``val_{mean,worst}_subset_acc`` -> ``{mean,worst}_subset_acc`` (the same names as the final evaluation's)."""
    out = {"epoch": epoch}
    per_subset = (VAL + "acc_", VAL + MEAN_SUBSET_ACC, VAL + WORST_SUBSET_ACC)
    for key, value in metrics.items():
        if key == TRAIN_LOSS:
            key = "loss"
        elif key.startswith(per_subset):
            key = key[len(VAL):]
        out[key] = float(value)
    return out


def final_metrics(report: dict) -> dict[str, float]:
    """The final evaluation (after per-subset BatchNorm recalibration, if configured) in the same names:
    ``acc_<subset>`` and the summaries."""
    flat = flat_metrics(report["subsets"], report["summary"])
    return {k: v for k, v in flat.items() if k.startswith("acc_") or k in report["summary"]}


def rescale_lr(ckpt: dict, lr: float) -> bool:
    """Make a checkpoint's optimiser and schedule continue at base learning rate ``lr`` (PBT changed it):
    every rate is scaled by ``lr / saved base rate``, so warm-up and decay carry on at the same point."""
    sched, optim = ckpt.get("scheduler") or {}, ckpt.get("optimizer") or {}
    base = sched.get("base_lrs") or []
    if not base or math.isclose(base[0], lr, rel_tol=1e-12):
        return False
    factor = lr / base[0]
    sched["base_lrs"] = [b * factor for b in base]
    if sched.get("_last_lr"):
        sched["_last_lr"] = [v * factor for v in sched["_last_lr"]]
    for group in optim.get("param_groups", []):
        for key in ("lr", "initial_lr"):
            if key in group:
                group[key] = group[key] * factor
    return True


def restore_checkpoint(src: Path, run_dir: Path, trial_id: str, lr: float) -> dict:
    """Replace ``run_dir``'s checkpoints by the one in the Tune checkpoint folder ``src``; returns its meta.

    A trial's own checkpoint is not copied back when its run folder already holds one as new or newer (a
    trial paused by PBT, or interrupted after its last report): the trainer resumes from its newest."""
    meta = json.loads((src / CKPT_META).read_text())
    if meta["trial_id"] == trial_id:
        newest = latest_checkpoint(run_dir)
        if newest is not None and int(load_checkpoint(newest)["epoch"]) >= int(meta["epoch"]):
            return meta
    ckpt = load_checkpoint(src / CKPT_FILE)
    rescale_lr(ckpt, lr)
    for old in (run_dir / "checkpoints").glob("epoch_*.pt"):
        old.unlink()
    (run_dir / "model.pt").unlink(missing_ok=True)
    atomic_torch_save(ckpt, epoch_checkpoint(run_dir, int(ckpt["epoch"])))
    return meta


def report(metrics: dict, checkpoint: Path | None, trial_id: str) -> None:
    """``tune.report`` with ``checkpoint`` (a trainer checkpoint file) attached as a Tune checkpoint folder.

    When Tune stops or pauses the trial (ASHA, PBT), ``tune.report`` raises ``SystemExit`` in this thread:
    the trainer then marks the MLflow run and releases the run folder as for any interruption."""
    from ray import tune

    if checkpoint is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix=".tune-checkpoint-", dir=checkpoint.parents[1]) as tmp:
        try:
            os.link(checkpoint, Path(tmp) / CKPT_FILE)  # same file system: no copy (Tune copies it to storage)
        except OSError:
            shutil.copy2(checkpoint, Path(tmp) / CKPT_FILE)
        (Path(tmp) / CKPT_META).write_text(json.dumps({"trial_id": trial_id, "epoch": metrics["epoch"]}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def scheduler_stop_reason(epoch: int) -> str:
    return f"stopped by the sweep's scheduler after epoch {epoch}"


class TuneReporter(Callback):
    """Reports each epoch to Tune with its checkpoint, and the end of training with the final evaluation
    (so a finished trial's last result is its full per-subset evaluation). When Tune stops the trial at an
    epoch (ASHA's rung, PBT's pause), training ends as :class:`StoppedEarly`: the trial's MLflow run is
    FINISHED and tagged, not failed."""

    def __init__(self, epochs: int, trial_id: str, run_dir: Path):
        self.epochs, self.trial_id, self.run_dir = epochs, trial_id, run_dir
        self.last: dict[str, float] = {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        self.last = tune_metrics(epoch, metrics)
        if epoch < self.epochs:
            try:
                report(self.last, Path(checkpoint), self.trial_id)
            except SystemExit:  # Tune ends a stopped trial's thread this way
                raise StoppedEarly(scheduler_stop_reason(epoch)) from None

    def on_fit_end(self, result: FitResult) -> None:
        report(final_result(self.last, result.report, self.epochs), latest_checkpoint(self.run_dir), self.trial_id)


def final_result(last: dict[str, float], evaluation: dict, epochs: int) -> dict[str, float]:
    """A finished trial's last result: its last epoch's metrics and its final evaluation."""
    return {**last, **final_metrics(evaluation), "epoch": epochs, "final_eval": 1.0}


# train(config, tags=..., hooks=...) -> summary: the application's training of a complete config mapping
# (``dynconv.launch.sweep.train_trial``); a summary with ``finished_before`` is a run found finished on disk
Train = Callable[..., dict]


@dataclass(frozen=True)
class TrialSetup:
    """What every trial shares (plain data and a function reference: it travels to the trial processes)."""
    base: dict                   # the sweep's config (file + overrides) as a nested mapping
    trials_dir: str              # run folders: <trials_dir>/<trial id>
    sweep_name: str
    train: Train                 # runs one trial's training
    fixed: dict = field(default_factory=dict)  # dotted config keys set for every trial (e.g. where to track)
    tags: dict = field(default_factory=dict)   # tags for every trial's run (e.g. its parent)
    threads: int = 1             # torch CPU threads per trial (its CPU share)

    def run_dir(self, trial_id: str) -> Path:
        return Path(self.trials_dir) / trial_id

    def trial_config(self, params: dict, trial_id: str) -> dict:
        """The trial's config mapping (validated by ``train``: a bad value fails the trial with one line)."""
        fixed = {"run.dir": str(self.run_dir(trial_id)), "run.name": f"{self.sweep_name}-{trial_id}",
                 "train.resume": "auto", "eval.every_epoch": True, **self.fixed}
        return with_params(self.base, {**params, **fixed})


@contextmanager
def _logging_to(path: Path):
    """The trainer's messages (the ``dynconv`` logger) go to the trial's ``train.log`` while it trains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("dynconv")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def train_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable (``tune.with_parameters(train_trial, setup=...)``)."""
    import torch
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    params = plain(dict(config))
    cfg = setup.trial_config(params, trial_id)
    run_dir = setup.run_dir(trial_id)
    torch.set_num_threads(max(1, setup.threads))

    state_file = run_dir / SWEEP_TRIAL
    state = json.loads(state_file.read_text()) if state_file.exists() else {"exploits": []}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as src:
            meta = restore_checkpoint(Path(src), run_dir, trial_id, float(cfg["train"]["lr"]))
        if meta["trial_id"] != trial_id:  # PBT: continue from a stronger trial's weights with new values
            state["exploits"].append({"from": meta["trial_id"], "epoch": meta["epoch"], "params": params})
    state["params"] = params
    atomic_write_text(state_file, json.dumps(state, indent=1) + "\n")
    tags = {"dynconv.kind": "sweep-trial", "dynconv.sweep": setup.sweep_name, "dynconv.sweep.trial": trial_id,
            "dynconv.sweep.params": json.dumps(params, sort_keys=True)[:5000],
            "dynconv.sweep.exploits": str(len(state["exploits"])), **setup.tags}
    epochs = int(cfg["train"]["epochs"])

    with _logging_to(run_dir / TRAIN_LOG):
        try:
            result = setup.train(cfg, tags=tags, hooks=[TuneReporter(epochs, trial_id, run_dir)])
            if result.get("finished_before"):
                # the trial had finished, but Tune's saved state is older than its end (a job pre-empted or
                # killed right after): report its final result again instead of leaving its last as an epoch's
                last = tune_metrics(epochs, result["epoch_metrics"])
                report(final_result(last, result["report"], epochs), latest_checkpoint(run_dir), trial_id)
        except Exception as e:
            logging.getLogger("dynconv").info(f"dynconv: error: {e}")
            raise
