"""Running a sweep with Ray Tune: :func:`run_sweep` does the whole search from plain (picklable) arguments,
on a local Ray instance it starts or on an existing cluster (``ray_address``), so the same call runs inside a
batch job. What it runs and where it records are handed over by the caller, as submitit receives callables:
``train`` (one trial's training), ``schema`` (the config schema), ``tracking`` (a :class:`SweepRecord`, e.g.
the application's MLflow parent run). Layout of ``out``:

* ``sweep.json`` — the sweep's settings (config, space, scheduler, ...), read back by ``--resume``;
* ``tune/`` — Ray Tune's experiment state, results and checkpoints (``Tuner.restore`` resumes from it);
* ``trials/<trial id>/`` — each trial's ``run.dir`` (checkpoints, ``eval.json``, ``train.log``);
* ``best.yaml`` (a complete config for ``dynconv train``), ``summary.md`` (the table printed at the end) and
  ``summary.json`` (the same, per trial, for scripts).

The parts: ``spec`` (options, stored settings, checks), ``tuner`` (Ray, the Tuner), ``trainable`` (one
trial), ``results`` (rows, table, best).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Protocol, Sequence

import yaml

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text

from .results import TrialRow, best_row, collect_rows, interrupted, markdown, tune_trials
from .space import Schema, SearchSpace, apply_params
from .spec import TRIALS_DIR, TUNE_DIR, SweepSpec, num_trials
from .trainable import Train, TrialSetup
from .tuner import build_tuner, check_resources, init_ray


class SweepRecord(Protocol):
    """Where a sweep is recorded besides ``out`` (the application's MLflow parent run)."""

    run_id: str | None           # the sweep's record (``parent_run_id`` of the result)
    uri: str | None              # where it is (``tracking_uri`` of the result)
    trial_fixed: dict            # config keys every trial gets (e.g. its tracking URI)
    trial_tags: dict             # tags every trial's run gets (e.g. its parent)

    def settle(self, rows: list[TrialRow], trials_dir: Path) -> None:
        """Close and tag the trials' records by how far each got."""

    def finish(self, files: list[Path], metrics: dict[str, float], stopped: bool) -> None:
        """The sweep's files and summary metrics; its status."""

    def fail(self, exc: BaseException) -> None:
        """The sweep ends with ``exc``."""


def resume_state(out: Path, resume: bool | str, log: Callable[[str], None] = print) -> bool:
    """Whether to continue the sweep in ``out`` (``resume="auto"``: if it holds one, as a requeued job does);
    a contradiction (a new sweep over an old one, a resume of nothing) is a one-line error."""
    from ray import tune

    exists = tune.Tuner.can_restore(str(out / TUNE_DIR))
    if resume == "auto":
        if exists:
            log(f"resuming the sweep in {out}")
        return exists
    if not resume and exists:
        raise DynconvError(f"{out} already holds a sweep: pass --resume to continue it, or choose another --out")
    if resume and not exists:
        raise DynconvError(f"--resume: {out} holds no Ray Tune state to resume: run the sweep without --resume")
    return bool(resume)


def run_sweep(out: Path, spec: SweepSpec, schema: Schema, train: Train, *, resume: bool = False,
              ray_address: str | None = None, num_cpus: int | None = None, verbose: int = 1,
              callbacks: Sequence = (), log: Callable[[str], None] = print,
              tracking: Callable[[SweepSpec, SearchSpace], SweepRecord | None] = lambda spec, space: None) -> dict:
    """Run (or with ``resume=True`` continue, see :func:`resume_state`) the sweep ``spec`` in ``out``; returns
    its summary.

    ``ray_address``: connect to that Ray cluster instead of starting a local one with ``num_cpus`` CPUs.
    ``callbacks``: extra ``ray.tune.Callback`` objects. ``tracking(spec, space)`` opens the sweep's record once
    Ray is up and the resources are checked. Result keys: ``status`` (``finished``/``interrupted``), ``rows``,
    ``best`` (a row), ``best_config``, ``summary`` (Markdown), ``trial_epochs``, ``parent_run_id``.
    ``verbose``: 0 silent, 1 one line per trial event, 2 Ray Tune's own progress tables."""
    search_space = spec.search_space(schema)
    random.seed(spec.seed)  # PBT's exploit/explore choices

    started = init_ray(ray_address, num_cpus)
    record = None
    try:
        check_resources(spec.resources)
        out.mkdir(parents=True, exist_ok=True)
        spec.save(out)
        record = tracking(spec, search_space)
        setup = TrialSetup(base=spec.base, trials_dir=str(out / TRIALS_DIR), sweep_name=f"sweep-{out.name}",
                           train=train, fixed=record.trial_fixed if record else {},
                           tags=record.trial_tags if record else {}, threads=max(1, int(spec.resources["cpu"])))
        log(f"sweep: {spec.scheduler} + {spec.search} search over {', '.join(search_space.keys)}; "
            f"{num_trials(spec, search_space)} trials of up to {spec.epochs} epochs; Ray Tune state in {out / TUNE_DIR}")
        results = build_tuner(spec, search_space, setup, out, resume, verbose, callbacks).fit()

        trials_dir = out / TRIALS_DIR
        trials = tune_trials(out)
        rows = collect_rows(results, trials, trials_dir, spec.metric)
        stopped = interrupted(trials, spec, search_space)
        if record:
            record.settle([r for r in rows if r.finished or r.error or not stopped], trials_dir)
        table = markdown(rows, spec, search_space.keys, stopped)
        trial_epochs = sum(r.trained_epochs for r in rows)
        best = None if stopped else best_row(rows)
        summary = table + (f"\n{trial_epochs} trial-epochs trained ({len(rows)} trials x {spec.epochs} epochs "
                           f"= {len(rows) * spec.epochs} without early stopping).\n")
        files = [spec.save(out)]
        best_file = None
        if best is not None:
            cfg = apply_params(spec.base, {**best.params, "run.dir": str(out / "best"), "run.name": "sweep-best",
                                           "train.resume": None}, schema)
            header = (f"# best trial {best.trial} of the sweep in {out}: {spec.metric} = {best.metric:.4f}\n"
                      f"# dynconv train --config {out / 'best.yaml'}\n")
            best_file = atomic_write_text(out / "best.yaml", header + yaml.safe_dump(cfg, sort_keys=False))
            summary += f"Best: trial {best.trial}, {spec.metric} {100 * best.metric:.2f}% -> {best_file}\n"
            files.append(best_file)
        elif not stopped:
            first = next((r.error for r in rows if r.error), "no trial reported a result")
            raise DynconvError(f"every trial of the sweep failed (first: {first}); see {trials_dir}/*/train.log")
        result = {"status": "interrupted" if stopped else "finished", "rows": [asdict(r) for r in rows],
                  "best": asdict(best) if best else None, "best_config": str(best_file) if best_file else None,
                  "metric": spec.metric, "trial_epochs": trial_epochs, "out": str(out),
                  "parent_run_id": record.run_id if record else None, "tracking_uri": record.uri if record else None}
        files.append(atomic_write_text(out / "summary.json", json.dumps(result, indent=1) + "\n"))
        files.append(atomic_write_text(out / "summary.md", summary))
        if record:
            metrics = {"trials": len(rows), "trial_epochs": trial_epochs,
                       "trials_stopped_early": sum(not r.finished and not r.error for r in rows)}
            if best is not None:
                metrics[f"best_{spec.metric}"] = best.metric
            record.finish(files, metrics, stopped)
        return {**result, "summary": summary}
    except BaseException as e:
        if record:
            record.fail(e)
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
