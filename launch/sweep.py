"""`dynconv sweep` as this application runs it: the config loaded and checked, Ray Tune's search
(``dynconv.sweeps``) given the training entry point and the schema, and the sweep recorded in MLflow: a
parent run for the sweep, one child run per trial (each trial's run is its training's, see ``tracking.py``).

The sweep's MLflow store is ``tracking.uri``, else ``out/mlruns.db``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from dynconv.errors import DynconvError
from dynconv.sweeps import runner
from dynconv.sweeps.results import TrialRow
from dynconv.sweeps.space import SearchSpace
from dynconv.sweeps.spec import SweepOptions, SweepSpec, resolve_spec
from dynconv.sweeps.trainable import scheduler_stop_reason

from .config import SCHEMA, load_config, validate_config
from .tracking import MlflowRun, default_tracking_uri, settle_run, stopped_early_tags, tag_recorded_run


def train_trial(config: dict, tags: dict | None = None, hooks: Sequence = ()) -> dict:
    """One trial's training (``TrialSetup.train``): a complete config mapping, validated here. A trial that
    already has an MLflow run (restored, exploited by PBT, requeued) gets the trial's current tags on it."""
    from .training import run_training

    cfg = validate_config(config)
    if tags and cfg.tracking.enabled:
        tag_recorded_run(Path(cfg.run.dir), tags)
    return run_training(cfg, tags=tags, hooks=hooks)


class SweepRun:
    """The sweep's MLflow parent run (:class:`dynconv.sweeps.runner.SweepRecord`): opened, or reopened on
    resume, in the sweep's store; its trials log child runs there."""

    def __init__(self, out: Path, spec: SweepSpec, space: SearchSpace):
        tracking = spec.base["tracking"]
        self.uri = tracking.get("uri") or default_tracking_uri(out / "x")
        self.run = MlflowRun(self.uri, tracking["experiment"], out, f"sweep-{out.name}", resume=True,
                             params={"sweep.scheduler": spec.scheduler, "sweep.search": spec.search,
                                     "sweep.num_samples": spec.num_samples, "sweep.metric": spec.metric,
                                     "sweep.space": spec.space_path, "sweep.keys": ",".join(space.keys),
                                     "sweep.resources": json.dumps(spec.resources),
                                     "train.epochs": spec.epochs, "model.name": spec.base["model"]["name"]},
                             tags={"dynconv.kind": "sweep"}, wait_s=tracking.get("wait_s", 0.0))
        self.run_id = self.run.run_id
        self.trial_fixed = {"tracking.uri": self.uri}
        self.trial_tags = {"mlflow.parentRunId": self.run_id}

    @classmethod
    def opener(cls, out: Path) -> Callable[[SweepSpec, SearchSpace], "SweepRun | None"]:
        return lambda spec, space: cls(out, spec, space) if spec.base["tracking"]["enabled"] else None

    def settle(self, rows: list[TrialRow], trials_dir: Path) -> None:
        settle_trial_runs(rows, trials_dir)

    def finish(self, files: list[Path], metrics: dict[str, float], stopped: bool) -> None:
        for f in files:
            self.run.log_artifact(f)
        self.run.log_metrics(metrics)
        self.run.finish("KILLED" if stopped else "FINISHED")

    def fail(self, exc: BaseException) -> None:
        self.run.finish("FAILED" if isinstance(exc, Exception) else "KILLED")


def settle_trial_runs(rows: list[TrialRow], trials_dir: Path) -> None:
    """Tag every trial's MLflow run with how far it got, and close the runs whose trial could not.

    A trial closes its own run (an early stop is FINISHED). But Ray Tune ends a stopped trial's actor
    without waiting for its training thread (``Trainable.cleanup`` joins it with timeout 0), so the thread
    can be cut off while it closes the run: its buffered records are replayed here, and a run still RUNNING
    gets the status its trial reached (FAILED for an error, else FINISHED; a stopped one is tagged as the
    trainer would have). Tracking never fails the sweep."""
    for row in rows:
        stopped = not row.finished and not row.error
        settle_run(trials_dir / row.trial, "FAILED" if row.error else "FINISHED",
                   {"dynconv.sweep.stopped_early": str(stopped).lower(), "dynconv.sweep.epochs": str(row.epochs)},
                   stopped_early_tags(scheduler_stop_reason(row.epochs)) if stopped else None)


def sweep_spec(out: Path, config: str | None, space: str | None, overrides: Sequence[str] = (),
               options: SweepOptions | None = None, resume: bool = False) -> SweepSpec:
    """The sweep's checked settings (every user error is raised here, before Ray starts)."""
    if not resume and (config is None or space is None):
        raise DynconvError("dynconv sweep needs --config CFG and --space SPACE.yaml (or --resume with --out DIR)")
    base = load_config(config, list(overrides)).model_dump() if config is not None or overrides else None
    return resolve_spec(out, resume, base, space, SCHEMA, options)


def run_sweep(out: str | Path, config: str | None = None, space: str | None = None, overrides: Sequence[str] = (),
              options: SweepOptions | None = None, *, resume: bool | str = False, ray_address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1, callbacks: Sequence = (),
              log: Callable[[str], None] = print) -> dict:
    """Run (or with ``resume=True`` continue) a sweep in ``out``; returns its summary (see
    :func:`dynconv.sweeps.runner.run_sweep`). ``options`` left ``None`` take the defaults (or, on resume, the
    stored values); ``resume="auto"`` continues the sweep in ``out`` if there is one (a requeued batch job)."""
    out = Path(out).resolve()
    resume = runner.resume_state(out, resume, log)
    spec = sweep_spec(out, config, space, overrides, options, resume)
    return runner.run_sweep(out, spec, SCHEMA, train_trial, resume=resume, ray_address=ray_address,
                            num_cpus=num_cpus, verbose=verbose, callbacks=callbacks, log=log,
                            tracking=SweepRun.opener(out))
