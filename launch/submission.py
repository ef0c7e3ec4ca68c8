"""``dynconv submit``: validate everything, freeze the config(s) into a 0700 submission folder, then hand one
job (or one array job) to submitit through ``dynconv.slurm``: the training of each frozen config, or another
``dynconv`` command line."""
from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path
from typing import Callable, Sequence

from dynconv.errors import DynconvError
from dynconv.fileio import read_yaml
from dynconv.slurm.executor import Resources
from dynconv.slurm.jobs import CliJob, TrainJob
from dynconv.slurm.submit import check_resources, dispatch, dry_run_script

from .config import dump_yaml, load_config


def read_array(path: str | Path) -> list[list[str]]:
    """A YAML list of override sets -> one list of ``key=value`` overrides per array element."""
    items = read_yaml(path, "array file")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) and i for i in items):
        raise DynconvError(f"array file {path} must be a non-empty YAML list of mappings, e.g. "
                           "'- {dropout.kind: constant, dropout.p: 0.3}'")
    return [[f"{k}={json.dumps(v)}" for k, v in item.items()] for item in items]


def _given(overrides: list[str], key: str) -> str | None:
    return next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), None)


def _frozen_configs(config: str, overrides: list[str], array: list[list[str]] | None, folder: Path,
                    array_file: str | None):
    """Validate every element's config and return [(config text, config, what)]; nothing is written."""
    base_dir = _given(overrides, "run.dir")
    elements = array if array is not None else [[]]
    out = []
    for i, extra in enumerate(elements):
        run_dir = Path(base_dir) if base_dir else folder / "run"
        if array is not None:
            run_dir = run_dir.with_name(f"{run_dir.name}_{i}")
        try:
            cfg = load_config(config, [*overrides, *extra, f"run.dir={run_dir.resolve()}"])
        except DynconvError as e:
            where = f"array element {i} of {array_file}" if array is not None else config
            raise DynconvError(f"{where}: {e}") from None
        out.append((dump_yaml(cfg), cfg, " ".join(extra) or Path(config).name))
    return out


def _prepare_tracking(cfg) -> None:
    """Create the MLflow store and experiment now, so concurrent array elements only add runs to it."""
    if cfg.tracking.enabled:
        from .tracking import default_tracking_uri, ensure_experiment

        ensure_experiment(cfg.tracking.uri or default_tracking_uri(cfg.run.dir), cfg.tracking.experiment)


def train_frozen(config: str, tags: dict | None = None, hooks: Sequence = ()) -> dict:
    """The training a job runs (:class:`dynconv.slurm.jobs.TrainJob`): the frozen config, continuing its run
    folder (a requeued job resumes where the pre-empted one stopped); progress goes to the job's output."""
    from .console import log_to_stdout
    from .training import run_training

    log_to_stdout()
    return run_training(load_config(config, ["train.resume=auto"]), tags=tags, hooks=hooks)


def submit(config: str | None, overrides: list[str], res: Resources, *, cluster: str, root: Path,
           array_file: str | None = None, command: str | None = None, dry_run: bool = False,
           cli: Callable[[list[str]], int] | None = None, commands: Sequence[str] = ()) -> dict:
    """Submit a training (``config`` + overrides, optionally an array) or any other dynconv ``command``:
    ``cli(argv)`` runs it in the job, and ``commands`` are the ones allowed there."""
    check_resources(res, cluster)
    if (config is None) == (command is None):
        raise DynconvError("dynconv submit needs --config CFG (training) or --run 'COMMAND ...' (e.g. 'ablate ...')")
    array = read_array(array_file) if array_file else None
    if command is not None and array is not None:
        raise DynconvError("--array applies to training (--config), not to --run")
    if config is not None:
        if dry_run:  # validate only
            _frozen_configs(config, overrides, array, root / f"<timestamp>-{res.name}", array_file)
        what = None
    else:
        argv = shlex.split(command)
        if not argv or argv[0] not in commands or cli is None:
            raise DynconvError(f"--run {command!r}: start with a dynconv command such as 'eval', 'ablate', 'sweep'")
        what = " ".join(argv)
    if dry_run:
        return dry_run_script(res, root, len(array) if array else None)

    def calls_for(folder: Path) -> tuple[list, list[dict]]:
        if config is None:
            return [CliJob(cli, argv)], [{"what": what, "config": None, "run_dir": None}]
        frozen = _frozen_configs(config, overrides, array, folder, array_file)
        _prepare_tracking(frozen[0][1])
        calls, entries = [], []
        for i, (text, cfg, label) in enumerate(frozen):
            cfg_file = folder / (f"config_{i}.yaml" if array is not None else "config.yaml")
            cfg_file.write_text(text)
            calls.append(TrainJob(functools.partial(train_frozen, str(cfg_file))))
            entries.append({"what": label, "config": str(cfg_file), "run_dir": cfg.run.dir})
        return calls, entries

    return dispatch(calls_for, res, cluster, root, array=array is not None,
                    meta={"config": config, "overrides": overrides, "array_file": array_file})
