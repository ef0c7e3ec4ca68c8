"""``dynconv submit``: validate everything, freeze the config(s) into a 0700 submission folder, then hand one
job (or one array job) to submitit."""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Callable, Sequence

from dynconv.errors import DynconvError
from dynconv.fileio import read_yaml

from .executor import Resources, check_against_cluster, make_executor, sbatch_script
from .submissions import new_submission_dir, write_record


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
    """Validate every element's config and return [(config text, run dir, what)]; nothing is written."""
    from dynconv.launch.config import dump_yaml, load_config

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
        from dynconv.launch.tracking import default_tracking_uri, ensure_experiment

        ensure_experiment(cfg.tracking.uri or default_tracking_uri(cfg.run.dir), cfg.tracking.experiment)


def submit(config: str | None, overrides: list[str], res: Resources, *, cluster: str, root: Path,
           array_file: str | None = None, command: str | None = None, dry_run: bool = False,
           cli: Callable[[list[str]], int] | None = None, commands: Sequence[str] = ()) -> dict:
    """Submit a training (``config`` + overrides, optionally an array) or any other dynconv ``command``:
    ``cli(argv)`` runs it in the job, and ``commands`` are the ones allowed there."""
    from .jobs import CliJob, TrainJob

    res.check()
    if cluster == "slurm":
        check_against_cluster(res)  # partition exists, walltime within its limit: before anything is written
    if (config is None) == (command is None):
        raise DynconvError("dynconv submit needs --config CFG (training) or --run 'COMMAND ...' (e.g. 'ablate ...')")
    array = read_array(array_file) if array_file else None
    if command is not None and array is not None:
        raise DynconvError("--array applies to training (--config), not to --run")
    folder = root / f"<timestamp>-{res.name}" if dry_run else None
    if config is not None:
        if dry_run:
            _frozen_configs(config, overrides, array, folder, array_file)  # validate only
        what = None
    else:
        argv = shlex.split(command)
        if not argv or argv[0] not in commands or cli is None:
            raise DynconvError(f"--run {command!r}: start with a dynconv command such as 'eval', 'ablate', 'sweep'")
        what = " ".join(argv)
    if dry_run:
        return {"script": sbatch_script(Path(folder) / "logs", res, len(array) if array else None)}

    def calls_for(folder: Path) -> tuple[list, list[dict]]:
        if config is None:
            return [CliJob(cli, argv)], [{"what": what, "config": None, "run_dir": None}]
        frozen = _frozen_configs(config, overrides, array, folder, array_file)
        _prepare_tracking(frozen[0][1])
        calls, entries = [], []
        for i, (text, cfg, label) in enumerate(frozen):
            cfg_file = folder / (f"config_{i}.yaml" if array is not None else "config.yaml")
            cfg_file.write_text(text)
            calls.append(TrainJob(str(cfg_file), []))
            entries.append({"what": label, "config": str(cfg_file), "run_dir": cfg.run.dir})
        return calls, entries

    return dispatch(calls_for, res, cluster, root, array=array is not None,
                    meta={"config": config, "overrides": overrides, "array_file": array_file})


def submit_sweep(run_sweep: Callable[..., dict], sweep_kwargs: dict, res: Resources, *, cluster: str, root: Path,
                 dry_run: bool = False) -> dict:
    """Run ``run_sweep(**sweep_kwargs)`` (the sweep's entry point, handed over by the caller) in one job: Ray
    head on the first node, workers on the others (one task per node)."""
    from .ray_job import SweepJob

    res.check()
    if cluster == "slurm":
        check_against_cluster(res)
    res.tasks_per_node, res.task_per_gpu = 1, False  # one Ray node per Slurm node; Ray places trials on its GPUs
    if dry_run:
        return {"script": sbatch_script(root / f"<timestamp>-{res.name}" / "logs", res)}
    what = f"sweep {Path(sweep_kwargs['out']).name}"
    return dispatch(lambda folder: ([SweepJob(str(folder), run_sweep, sweep_kwargs)],
                                    [{"what": what, "config": sweep_kwargs.get("config"), "run_dir": None,
                                      "sweep_dir": str(sweep_kwargs["out"])}]),
                    res, cluster, root, array=False, meta={"sweep": sweep_kwargs})


def dispatch(calls_for, res: Resources, cluster: str, root: Path, *, array: bool, meta: dict) -> dict:
    """Create the submission folder, build the callables in it (``calls_for(folder) -> (calls, entries)``),
    submit them (as one array job if ``array``), record the submission. Nothing submitted: no folder left."""
    folder = new_submission_dir(root, res.name)
    try:
        calls, entries = calls_for(folder)
        ex = make_executor(folder / "logs", cluster, res)
        try:
            jobs = ex.submit_array(calls) if array else [ex.submit(calls[0])]
        except Exception as e:  # sbatch's own refusal (bad account/qos/constraint, ...)
            lines = [ln for ln in str(e).splitlines() if "error" in ln.lower()] or str(e).splitlines() or [repr(e)]
            raise DynconvError(f"the scheduler refused the job: {lines[-1].strip()[:200]}") from None
    except BaseException:
        if not any(folder.joinpath("logs").glob("*")):
            import shutil

            shutil.rmtree(folder, ignore_errors=True)  # nothing was submitted: leave no trace
        raise
    for job, entry in zip(jobs, entries):
        entry["job_id"] = str(job.job_id)
    record = {"submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "cluster": cluster, **meta,
              "resources": res.__dict__, "executor_folder": str(folder / "logs"), "jobs": entries}
    write_record(folder, record)
    return {"folder": folder, "jobs": jobs, "record": record}
