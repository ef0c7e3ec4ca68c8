"""Ray and Ray Tune: start (or join) a Ray cluster, and build the Tuner of a sweep (scheduler, search,
resources, checkpoints), also restored from its saved state for ``--resume``."""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Sequence

from dynconv.errors import DynconvError

from .space import SearchSpace
from .spec import TUNE_DIR, SweepSpec
from .trainable import TrialSetup, train_trial


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Start a local Ray instance (``address=None``) or connect to a cluster; returns whether this call
    started Ray (the caller then shuts it down). Trial output goes to the trials' ``train.log``, not here."""
    import ray

    if ray.is_initialized():
        return False
    import dynconv

    root = str(Path(dynconv.__file__).resolve().parents[1])  # trial processes import this same dynconv
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    # a stopped trial's thread still closes its MLflow run; Tune re-uses its actor for the next trial only
    # once the thread has ended, waiting 2 s by default, after which the next trial fails ("Trainable runner
    # reuse requires reset_config() ..."): too short on a busy node
    env = {"PYTHONPATH": path, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "0",
           "TUNE_FUNCTION_THREAD_TIMEOUT_S": os.environ.get("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")}
    for var in os.environ:  # the trials' settings (and dynconv's, e.g. where the sweep was launched from)
        if var in ("MLFLOW_ENABLE_ASYNC_LOGGING", "TQDM_DISABLE") or var.startswith("DYNCONV_"):
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


def check_resources(resources: dict) -> None:
    import ray

    total = ray.cluster_resources()
    for key, ray_key in (("cpu", "CPU"), ("gpu", "GPU")):
        if resources[key] > total.get(ray_key, 0):
            raise DynconvError(f"--resources-per-trial asks for {key}={resources[key]:g} per trial but the Ray cluster "
                               f"has {total.get(ray_key, 0):g}: lower it, or connect to a larger cluster")


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _not_incomplete_trials_line(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Trials did not complete")


def _drop_incomplete_trials_line() -> None:
    """Ray Tune's closing ``ERROR ... Trials did not complete: [<trial objects>]`` repeats, unreadably, what
    the summary and the one-line error say about failed trials: dropped (only that line)."""
    logging.getLogger("ray.tune.tune").addFilter(_not_incomplete_trials_line)  # added once: addFilter checks


def build_tuner(spec: SweepSpec, space: SearchSpace, setup: TrialSetup, out: Path, resume: bool, verbose: int,
           callbacks: Sequence):
    from ray import tune

    from .progress import ProgressLines
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if verbose < 2:  # a failed trial is one line (progress, summary); its traceback is in its error.txt
        os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
        _drop_incomplete_trials_line()
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
