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
"""
from __future__ import annotations

import json
import logging
import os
import random
import secrets
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Sequence

from dynconv.channels import parse_subsets, subset_name, validate_channels
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from launch.config import dump_yaml, load_config
from launch.tracking import RUN_FILE, MlflowTracker, default_tracking_uri, mlflow_client

from .space import SearchSpace, apply_params, parse_space, plain, read_space_file
from .trainable import TRIAL_FILE, TrialSetup, train_trial

SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHES = ("random", "grid", "optuna")
SPEC_FILE, TUNE_DIR, TRIALS_DIR = "sweep.json", "tune", "trials"
DEFAULTS = {"scheduler": "asha", "search": "random", "metric": "worst_subset_acc", "resources": "cpu=1,gpu=0",
            "grace_period": 1, "reduction_factor": 3, "seed": 0}


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored as ``out/sweep.json``."""
    base: dict                  # the config (file + overrides) as a nested mapping, data paths absolute
    space: dict                 # the search-space file's mapping
    space_path: str
    scheduler: str
    search: str
    num_samples: int
    max_concurrent: int | None
    metric: str
    resources: dict             # per trial: {"cpu": 1.0, "gpu": 0.0}
    grace_period: int           # ASHA: epochs before a trial can be stopped
    reduction_factor: float     # ASHA: keep 1/reduction_factor of the trials at each rung
    perturbation_interval: int  # PBT: epochs between exploit/explore steps
    seed: int

    @property
    def epochs(self) -> int:
        return int(self.base["train"]["epochs"])

    def search_space(self) -> SearchSpace:
        return parse_space(self.space, self.space_path, self.base)

    def save(self, out: Path) -> Path:
        return atomic_write_text(out / SPEC_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, out: Path) -> "SweepSpec":
        return cls(**json.loads((out / SPEC_FILE).read_text()))


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=1,gpu=0.5`` -> ``{"cpu": 1.0, "gpu": 0.5}``."""
    out = {"cpu": 1.0, "gpu": 0.0}
    for item in (s.strip() for s in str(text).split(",") if s.strip()):
        key, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not eq or key not in out or not number >= 0:
            raise DynconvError(f"--resources-per-trial {text!r}: use cpu=N,gpu=M with numbers >= 0 (e.g. cpu=1,gpu=0)")
        out[key] = number
    if out["cpu"] + out["gpu"] <= 0:
        raise DynconvError(f"--resources-per-trial {text!r}: a trial needs some cpu or gpu")
    return out


def _absolute_paths(base: dict) -> dict:
    """Trials run in other working directories (Ray workers): make relative data paths and sqlite URIs absolute."""
    for key in ("train", "val"):
        value = base["data"].get(key)
        if value and not Path(value).is_absolute() and Path(value).exists():
            base["data"][key] = str(Path(value).resolve())
    uri = base["tracking"].get("uri")
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        base["tracking"]["uri"] = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return base


def _check_metric(metric: str, base: dict) -> None:
    channels = validate_channels(base["data"]["channels"])
    names = [subset_name(s, channels) for s in parse_subsets(base["eval"]["subsets"], channels)]
    allowed = ["worst_subset_acc", "mean_subset_acc"] + [f"acc_{n}" for n in names]
    if metric not in allowed:
        raise DynconvError(f"--metric {metric}: choose one of {', '.join(allowed)} (acc_<subset> for a subset in "
                           "eval.subsets)")


def _check(spec: SweepSpec) -> SearchSpace:
    """Every user error, before Ray starts or anything is written."""
    if spec.scheduler not in SCHEDULERS:
        raise DynconvError(f"--scheduler {spec.scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if spec.search not in SEARCHES:
        raise DynconvError(f"--search {spec.search}: choose one of {', '.join(SEARCHES)}")
    space = spec.search_space()
    space.param_space(spec.search)  # grid needs finite values, optuna no grid axes
    if spec.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise DynconvError("--search optuna needs the optuna package: pip install optuna") from None
        if spec.scheduler == "pbt":
            raise DynconvError("--scheduler pbt chooses its own values: use it with --search random or grid")
    _check_metric(spec.metric, spec.base)
    if spec.num_samples < 1:
        raise DynconvError(f"--num-samples must be at least 1, got {spec.num_samples}")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise DynconvError(f"--max-concurrent must be at least 1, got {spec.max_concurrent}")
    if spec.scheduler == "asha":
        if not 1 <= spec.grace_period <= spec.epochs:
            raise DynconvError(f"--grace-period {spec.grace_period} must be between 1 and train.epochs={spec.epochs}")
        if not spec.reduction_factor > 1:
            raise DynconvError(f"--reduction-factor must be greater than 1, got {spec.reduction_factor}")
    if spec.scheduler == "pbt":
        if not 1 <= spec.perturbation_interval < spec.epochs:
            raise DynconvError(f"--perturbation-interval {spec.perturbation_interval} must be at least 1 and less "
                               f"than train.epochs={spec.epochs} (PBT acts between epochs)")
        space.pbt_mutations()
    for key in ("train", "val"):
        path = spec.base["data"].get(key)
        if not path:
            raise DynconvError(f"config key 'data.{key}' is required: a .beton file or an image folder")
        if not Path(path).exists():  # checked here rather than once per trial
            raise DynconvError(f"data.{key} {path} does not exist: pass a .beton file or an image folder")
    return space


def resolve_spec(out: Path, resume: bool, config: str | None, space: str | None, overrides: Sequence[str],
                 options: dict) -> SweepSpec:
    """The sweep's settings: from the arguments, or (``resume``) from ``out/sweep.json``, where any argument
    that is given must agree with the stored value."""
    given_base = None
    if config is not None or overrides:
        cfg = load_config(config, list(overrides))
        given_base = _absolute_paths(cfg.model_dump())
    given_space = read_space_file(space) if space is not None else None
    if options.get("resources") is not None:
        options["resources"] = parse_resources(options["resources"])
    if resume:
        if not (out / SPEC_FILE).exists():
            raise DynconvError(f"--resume: {out} holds no sweep to resume ({SPEC_FILE} is missing): run without --resume")
        spec = SweepSpec.load(out)
        given = {**options, "base": given_base, "space": given_space}
        for f in fields(SweepSpec):
            value = given.get(f.name)
            if value is not None and plain(value) != plain(getattr(spec, f.name)):
                name = {"base": "the config (--config and overrides)", "space": "the search space"}.get(
                    f.name, "--" + f.name.replace("_", "-"))
                raise DynconvError(f"--resume: {name} differs from the interrupted sweep's in {out}: resume with the "
                                   "same settings (or none), or start a new sweep with another --out")
        _check(spec)
        return spec
    if config is None or space is None:
        raise DynconvError("dynconv sweep needs --config CFG and --space SPACE.yaml (or --resume with --out DIR)")
    epochs = int(given_base["train"]["epochs"])
    defaults = {**DEFAULTS, "num_samples": 1 if options["search"] == "grid" else 10,
                "perturbation_interval": max(1, epochs // 4)}
    values = {k: v if v is not None else defaults.get(k) for k, v in options.items()}
    if isinstance(values["resources"], str):
        values["resources"] = parse_resources(values["resources"])
    spec = SweepSpec(
        base=given_base, space=given_space, space_path=str(space), scheduler=values["scheduler"],
        search=values["search"], num_samples=int(values["num_samples"]), max_concurrent=values["max_concurrent"],
        metric=values["metric"], resources=values["resources"], grace_period=int(values["grace_period"]),
        reduction_factor=float(values["reduction_factor"]),
        perturbation_interval=int(values["perturbation_interval"]), seed=int(values["seed"]))
    _check(spec)
    return spec


# ---- Ray ----------------------------------------------------------------------------------------------

def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Start a local Ray instance (``address=None``) or connect to a cluster; returns whether this call
    started Ray (the caller then shuts it down). Trial output goes to the trials' ``train.log``, not here."""
    import ray

    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[1])  # trial processes import this same dynconv checkout
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0"}
    for var in ("MLFLOW_ENABLE_ASYNC_LOGGING", "TQDM_DISABLE"):
        if var in os.environ:
            env[var] = os.environ[var]
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  runtime_env={"env_vars": env})
    # Tune warns when it snapshots its state often, which short epochs do; the snapshots are what --resume needs
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not address and not any(v in os.environ for v in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        # a local instance with token authentication (Ray's default), without writing ~/.ray/auth_token
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # we ask for token authentication ourselves; Ray's note on how to opt out of it is noise here
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, **kwargs)
    return True


def _check_resources(resources: dict) -> None:
    import ray

    total = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        if resources[key] > total.get(ray_key, 0):
            raise DynconvError(f"--resources-per-trial asks for {key}={resources[key]:g} per trial but the Ray cluster "
                               f"has {total.get(ray_key, 0):g}: lower it, or connect to a larger cluster")


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _tuner(spec: SweepSpec, space: SearchSpace, setup: TrialSetup, out: Path, resume: bool, verbose: int,
           callbacks: Sequence):
    from ray import tune

    from .progress import ProgressLines
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if verbose < 2:  # a failed trial is one line (progress, summary); its traceback is in its error.txt
        os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup), spec.resources)
    if resume:
        return tune.Tuner.restore(str(out / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True)
    if spec.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=spec.epochs, grace_period=spec.grace_period,
                                  reduction_factor=spec.reduction_factor)
    elif spec.scheduler == "pbt":
        # synchronous: every exploit compares trials at the same epoch, and each perturbation step has one
        scheduler = PopulationBasedTraining(time_attr="epoch", perturbation_interval=spec.perturbation_interval,
                                            hyperparam_mutations=space.pbt_mutations(), custom_explore_fn=space.clip,
                                            synch=True)
    else:
        scheduler = FIFOScheduler()
    max_concurrent = None
    if spec.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        search_alg, max_concurrent = OptunaSearch(seed=spec.seed), spec.max_concurrent
    else:
        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0, random_state=spec.seed)
    return tune.Tuner(
        trainable, param_space=space.param_space(spec.search),
        tune_config=tune.TuneConfig(metric=spec.metric, mode="max", scheduler=scheduler, search_alg=search_alg,
                                    num_samples=spec.num_samples, max_concurrent_trials=max_concurrent,
                                    trial_dirname_creator=_trial_dirname, reuse_actors=True),
        run_config=tune.RunConfig(
            name=TUNE_DIR, storage_path=str(out), stop={"epoch": spec.epochs}, verbose=max(0, verbose - 1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4 if spec.scheduler == "pbt" else 1),
            callbacks=([ProgressLines(spec.metric, setup.trials_dir)] if verbose == 1 else []) + list(callbacks)))


# ---- results ------------------------------------------------------------------------------------------

@dataclass
class TrialRow:
    trial: str
    params: dict
    epochs: int             # the last epoch reached
    trained_epochs: int     # epochs this trial trained (its results; PBT: also the ones its weights were dropped after)
    metric: float | None
    finished: bool          # trained every epoch and ran the final evaluation
    error: str | None
    exploits: int = 0


def _rows(results, spec: SweepSpec, trials_dir: Path) -> list[TrialRow]:
    rows = []
    for r in results:
        m = r.metrics or {}
        trial = str(m.get("trial_id") or Path(r.path).name)
        df = r.metrics_dataframe
        state_file = trials_dir / trial / TRIAL_FILE
        exploits = len(json.loads(state_file.read_text())["exploits"]) if state_file.exists() else 0
        error = str(r.error).strip().splitlines()[-1].split("DynconvError: ")[-1][:200] if r.error else None
        rows.append(TrialRow(trial, plain(dict(r.config or {})), int(m.get("epoch", 0)),
                             len(df) if df is not None else int(m.get("epoch", 0)), m.get(spec.metric),
                             bool(m.get("final_eval")), error, exploits))
    return sorted(rows, key=lambda row: row.trial)


def _interrupted(out: Path, spec: SweepSpec, space: SearchSpace) -> bool:
    """Whether trials are left to run. Tune's saved state is read back because, after Ctrl+C, the trials in
    memory have been stopped (and look terminated) once the state was saved with them still running."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(out / TUNE_DIR)).trials
    return len(trials) < _num_trials(spec, space) or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _num_trials(spec: SweepSpec, space: SearchSpace) -> int:
    """num_samples, times the size of the grid (Tune repeats the grid for every sample)."""
    n = spec.num_samples
    for d in space.dims:
        if d.kind == "grid" or (spec.search == "grid" and d.kind == "choice"):
            n *= len(d.args)
    return n


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_fmt(v)}" for k, v in value.items())
    return str(value)


def markdown(rows: list[TrialRow], spec: SweepSpec, keys: list[str], interrupted: bool) -> str:
    """The summary table: finished trials first, best first."""
    extra = ["exploits"] if spec.scheduler == "pbt" else []
    head = ["trial", *keys, "epochs", f"{spec.metric} (%)", "stopped early", *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(keys) + "---:|---:|---|" + "---:|" * len(extra)]
    for row in sorted(rows, key=lambda r: (r.finished, -1 if r.metric is None else r.metric), reverse=True):
        if row.error:
            status = "error: " + row.error.replace("|", "/")
        elif row.finished:
            status = "no"
        else:
            status = "not yet" if interrupted else "yes"
        metric = "—" if row.metric is None else f"{100 * row.metric:.2f}"
        cells = [row.trial, *(_fmt(row.params.get(k, "")) for k in keys), str(row.epochs), metric, status]
        lines.append("| " + " | ".join(cells + [str(row.exploits)] * bool(extra)) + " |")
    return "\n".join(lines) + "\n"


def _best(rows: list[TrialRow]) -> TrialRow | None:
    """The finished trial with the highest metric (its final evaluation); else the best trial at all."""
    scored = [r for r in rows if r.metric is not None and not r.error]
    finished = [r for r in scored if r.finished]
    return max(finished or scored, key=lambda r: r.metric, default=None)


def _tag_children(rows: list[TrialRow], trials_dir: Path) -> None:
    """Mark early-stopped trials' MLflow runs FINISHED (the trainer saw them killed) and tag every run."""
    for row in rows:
        info_file = trials_dir / row.trial / RUN_FILE
        if not info_file.exists():
            continue
        info = json.loads(info_file.read_text())
        stopped = not row.finished and not row.error
        try:
            client = mlflow_client(info["tracking_uri"])
            client.set_tag(info["run_id"], "dynconv.sweep.stopped_early", str(stopped).lower())
            client.set_tag(info["run_id"], "dynconv.sweep.epochs", str(row.epochs))
            if stopped:
                client.set_terminated(info["run_id"], status="FINISHED")
        except Exception as e:  # noqa: BLE001 - tracking never fails the sweep
            warnings.warn(f"could not tag MLflow run {info['run_id']}: {str(e).splitlines()[0][:120]}", stacklevel=2)


def run_sweep(out: str | Path, config: str | None = None, space: str | None = None, overrides: Sequence[str] = (),
              scheduler: str | None = None, search: str | None = None, num_samples: int | None = None,
              max_concurrent: int | None = None, metric: str | None = None, resources: str | dict | None = None,
              grace_period: int | None = None, reduction_factor: float | None = None,
              perturbation_interval: int | None = None, seed: int | None = None, resume: bool = False,
              ray_address: str | None = None, num_cpus: int | None = None, verbose: int = 1,
              callbacks: Sequence = (), log: Callable[[str], None] = print) -> dict:
    """Run (or with ``resume=True`` continue) a sweep in ``out``; returns its summary.

    Arguments left ``None`` take the defaults (or, on resume, the stored values). ``ray_address``: connect
    to that Ray cluster instead of starting a local one with ``num_cpus`` CPUs. ``callbacks``: extra
    ``ray.tune.Callback`` objects. Result keys: ``status`` (``finished``/``interrupted``), ``rows``,
    ``best`` (a row), ``best_config``, ``summary`` (Markdown), ``trial_epochs``, ``parent_run_id``.
    ``verbose``: 0 silent, 1 one line per trial event, 2 Ray Tune's own progress tables."""
    out = Path(out).resolve()
    options = {"scheduler": scheduler, "search": search, "num_samples": num_samples, "max_concurrent": max_concurrent,
               "metric": metric, "resources": resources, "grace_period": grace_period,
               "reduction_factor": reduction_factor, "perturbation_interval": perturbation_interval, "seed": seed}
    from ray import tune

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
        _check_resources(spec.resources)
        out.mkdir(parents=True, exist_ok=True)
        spec.save(out)
        tracking = spec.base["tracking"]
        uri = (tracking.get("uri") or default_tracking_uri(out / "x")) if tracking["enabled"] else None
        if uri:
            parent = MlflowTracker(uri, tracking["experiment"], out, f"sweep-{out.name}", resume=True,
                                   params={"sweep.scheduler": spec.scheduler, "sweep.search": spec.search,
                                           "sweep.num_samples": spec.num_samples, "sweep.metric": spec.metric,
                                           "sweep.space": spec.space_path, "sweep.keys": ",".join(search_space.keys),
                                           "sweep.resources": json.dumps(spec.resources),
                                           "train.epochs": spec.epochs, "model.name": spec.base["model"]["name"]},
                                   tags={"dynconv.kind": "sweep"})
        setup = TrialSetup(base=spec.base, trials_dir=str(out / TRIALS_DIR), sweep_name=f"sweep-{out.name}",
                           tracking_uri=uri, parent_run_id=parent.run_id if parent else None,
                           threads=max(1, int(spec.resources["cpu"])))
        log(f"sweep: {spec.scheduler} + {spec.search} search over {', '.join(search_space.keys)}; "
            f"{_num_trials(spec, search_space)} trials of up to {spec.epochs} epochs; Ray Tune state in {out / TUNE_DIR}")
        results = _tuner(spec, search_space, setup, out, resume, verbose, callbacks).fit()

        trials_dir = out / TRIALS_DIR
        rows = _rows(results, spec, trials_dir)
        interrupted = _interrupted(out, spec, search_space)
        _tag_children([r for r in rows if r.finished or r.error or not interrupted], trials_dir)
        table = markdown(rows, spec, search_space.keys, interrupted)
        trial_epochs = sum(r.trained_epochs for r in rows)
        best = None if interrupted else _best(rows)
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
        elif not interrupted:
            first = next((r.error for r in rows if r.error), "no trial reported a result")
            raise DynconvError(f"every trial of the sweep failed (first: {first}); see {trials_dir}/*/train.log")
        result = {"status": "interrupted" if interrupted else "finished", "rows": [asdict(r) for r in rows],
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
            parent.finish("KILLED" if interrupted else "FINISHED")
        return {**result, "summary": summary}
    except BaseException as e:
        if parent:
            parent.finish("FAILED" if isinstance(e, Exception) else "KILLED")
        raise
    finally:
        if started:
            import ray

            ray.shutdown()
