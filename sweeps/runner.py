"""`dynconv sweep`: a Ray Tune search over the normal trainer's config, tracked in MLflow.

:func:`run_sweep` does the whole sweep from plain (picklable) arguments, on a local Ray instance it starts
or on an existing cluster (``ray_address``), so the same call runs inside a batch job. Layout of ``out``:

* ``sweep.json`` — the sweep's settings (config, space, scheduler, ...), read back by ``--resume``;
* ``tune/`` — Ray Tune's experiment state, results and checkpoints (``Tuner.restore`` resumes from it);
* ``trials/<trial id>/`` — each trial's ``run.dir`` (checkpoints, ``eval.json``, ``train.log``);
* ``mlruns.db`` — MLflow store (unless ``tracking.uri`` says otherwise): a parent run for the sweep, one
  child run per trial;
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
from typing import Callable, Sequence

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text

from ..launch.config import dump_yaml
from ..launch.tracking import MlflowRun, default_tracking_uri
from .results import best_row, collect_rows, interrupted, markdown, settle_trial_runs, tune_trials
from .space import apply_params
from .spec import TRIALS_DIR, TUNE_DIR, SweepOptions, num_trials, resolve_spec
from .trainable import TrialSetup
from .tuner import build_tuner, check_resources, init_ray


def run_sweep(out: str | Path, config: str | None = None, space: str | None = None, overrides: Sequence[str] = (),
              options: SweepOptions | None = None, *, resume: bool | str = False, ray_address: str | None = None,
              num_cpus: int | None = None, verbose: int = 1, callbacks: Sequence = (),
              log: Callable[[str], None] = print) -> dict:
    """Run (or with ``resume=True`` continue) a sweep in ``out``; returns its summary.

    ``options`` left ``None`` take the defaults (or, on resume, the stored values); ``resume="auto"``
    continues the sweep in ``out`` if there is one (a requeued batch job). ``ray_address``: connect to that
    Ray cluster instead of starting a local one with ``num_cpus`` CPUs. ``callbacks``: extra
    ``ray.tune.Callback`` objects. Result keys: ``status`` (``finished``/``interrupted``), ``rows``,
    ``best`` (a row), ``best_config``, ``summary`` (Markdown), ``trial_epochs``, ``parent_run_id``.
    ``verbose``: 0 silent, 1 one line per trial event, 2 Ray Tune's own progress tables."""
    out = Path(out).resolve()
    from ray import tune

    if resume == "auto":
        resume = tune.Tuner.can_restore(str(out / TUNE_DIR))
        if resume:
            log(f"resuming the sweep in {out}")
    if not resume and tune.Tuner.can_restore(str(out / TUNE_DIR)):
        raise DynconvError(f"{out} already holds a sweep: pass --resume to continue it, or choose another --out")
    if resume and not tune.Tuner.can_restore(str(out / TUNE_DIR)):
        raise DynconvError(f"--resume: {out} holds no Ray Tune state to resume: run the sweep without --resume")
    spec = resolve_spec(out, resume, config, space, overrides, options)
    search_space = spec.search_space()
    random.seed(spec.seed)  # PBT's exploit/explore choices

    started = init_ray(ray_address, num_cpus)
    parent = None
    try:
        check_resources(spec.resources)
        out.mkdir(parents=True, exist_ok=True)
        spec.save(out)
        tracking = spec.base["tracking"]
        uri = (tracking.get("uri") or default_tracking_uri(out / "x")) if tracking["enabled"] else None
        if uri:
            parent = MlflowRun(uri, tracking["experiment"], out, f"sweep-{out.name}", resume=True,
                                   params={"sweep.scheduler": spec.scheduler, "sweep.search": spec.search,
                                           "sweep.num_samples": spec.num_samples, "sweep.metric": spec.metric,
                                           "sweep.space": spec.space_path, "sweep.keys": ",".join(search_space.keys),
                                           "sweep.resources": json.dumps(spec.resources),
                                           "train.epochs": spec.epochs, "model.name": spec.base["model"]["name"]},
                                   tags={"dynconv.kind": "sweep"}, wait_s=tracking.get("wait_s", 0.0))
        setup = TrialSetup(base=spec.base, trials_dir=str(out / TRIALS_DIR), sweep_name=f"sweep-{out.name}",
                           tracking_uri=uri, parent_run_id=parent.run_id if parent else None,
                           threads=max(1, int(spec.resources["cpu"])))
        log(f"sweep: {spec.scheduler} + {spec.search} search over {', '.join(search_space.keys)}; "
            f"{num_trials(spec, search_space)} trials of up to {spec.epochs} epochs; Ray Tune state in {out / TUNE_DIR}")
        results = build_tuner(spec, search_space, setup, out, resume, verbose, callbacks).fit()

        trials_dir = out / TRIALS_DIR
        trials = tune_trials(out)
        rows = collect_rows(results, trials, trials_dir, spec.metric)
        stopped = interrupted(trials, spec, search_space)
        settle_trial_runs([r for r in rows if r.finished or r.error or not stopped], trials_dir)
        table = markdown(rows, spec, search_space.keys, stopped)
        trial_epochs = sum(r.trained_epochs for r in rows)
        best = None if stopped else best_row(rows)
        summary = table + (f"\n{trial_epochs} trial-epochs trained ({len(rows)} trials x {spec.epochs} epochs "
                           f"= {len(rows) * spec.epochs} without early stopping).\n")
        files = [spec.save(out)]
        best_file = None
        if best is not None:
            cfg = apply_params(spec.base, {**best.params, "run.dir": str(out / "best"), "run.name": "sweep-best",
                                           "train.resume": None})
            header = (f"# best trial {best.trial} of the sweep in {out}: {spec.metric} = {best.metric:.4f}\n"
                      f"# dynconv train --config {out / 'best.yaml'}\n")
            best_file = atomic_write_text(out / "best.yaml", header + dump_yaml(cfg))
            summary += f"Best: trial {best.trial}, {spec.metric} {100 * best.metric:.2f}% -> {best_file}\n"
            files.append(best_file)
        elif not stopped:
            first = next((r.error for r in rows if r.error), "no trial reported a result")
            raise DynconvError(f"every trial of the sweep failed (first: {first}); see {trials_dir}/*/train.log")
        result = {"status": "interrupted" if stopped else "finished", "rows": [asdict(r) for r in rows],
                  "best": asdict(best) if best else None, "best_config": str(best_file) if best_file else None,
                  "metric": spec.metric, "trial_epochs": trial_epochs, "out": str(out),
                  "parent_run_id": parent.run_id if parent else None, "tracking_uri": uri}
        files.append(atomic_write_text(out / "summary.json", json.dumps(result, indent=1) + "\n"))
        files.append(atomic_write_text(out / "summary.md", summary))
        if parent:
            for f in files:
                parent.log_artifact(f)
            metrics = {"trials": len(rows), "trial_epochs": trial_epochs,
                       "trials_stopped_early": sum(not r.finished and not r.error for r in rows)}
            if best is not None:
                metrics[f"best_{spec.metric}"] = best.metric
            parent.log_metrics(metrics)
            parent.finish("KILLED" if stopped else "FINISHED")
        return {**result, "summary": summary}
    except BaseException as e:
        if parent:
            parent.finish("FAILED" if isinstance(e, Exception) else "KILLED")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
