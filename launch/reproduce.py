"""``dynconv reproduce``: the exact command and config of a logged run, the git commit it needs, and whether
this checkout differs; with ``--run``, the training again in a new run folder."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.run_files import CONFIG, recorded_mlflow_run

from . import provenance as p

REPRODUCES_TAG = "reproduces"  # run.tags.reproduces=<run id or folder> on the new run


@dataclass
class Record:
    """What a run recorded of itself: its resolved config (YAML text), its source tags, what it is called."""
    name: str                   # the run id, or the run folder
    config: str
    source: dict[str, str] = field(default_factory=dict)
    run_dir: str | None = None


def from_run_dir(run_dir: Path) -> Record:
    if not (run_dir / CONFIG).is_file():
        raise DynconvError(f"{run_dir} has no {CONFIG}: pass the run.dir of a run started by 'dynconv train' "
                           "(or an MLflow run id with --tracking-uri)")
    source, info = p.recorded_source(run_dir), recorded_mlflow_run(run_dir)
    if source is None and info is not None:  # a run from before source.json: its MLflow tags
        try:
            return from_mlflow(info["run_id"], info["tracking_uri"])
        except DynconvError:
            pass
    return Record(info["run_id"] if info else str(run_dir), (run_dir / CONFIG).read_text(), source or {}, str(run_dir))


def from_mlflow(run_id: str, uri: str | None) -> Record:
    import tempfile

    import mlflow.artifacts

    from .mlflow_store import existing_store, mlflow_client, store_errors

    if not uri:
        raise DynconvError(f"{run_id} is not a run folder; as an MLflow run id it needs its store: pass "
                           "--tracking-uri (e.g. sqlite:///runs/mlruns.db) or set MLFLOW_TRACKING_URI")
    with store_errors(uri, f"read run {run_id} from"):
        client = mlflow_client(existing_store(uri))
        try:
            run = client.get_run(run_id)
        except Exception:
            raise DynconvError(f"no MLflow run {run_id!r} at {uri}: pass a run id from 'dynconv compare "
                               "--format csv', or a run.dir") from None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONFIG, dst_path=tmp,
                                                            tracking_uri=uri)
            except Exception:
                raise DynconvError(f"MLflow run {run_id} has no {CONFIG} artifact (it did not come from 'dynconv "
                                   "train', or did not finish): nothing to reproduce it from") from None
            config = Path(local).read_text()
    return Record(run_id, config, dict(run.data.tags), run.data.params.get("run.dir"))


def load_record(target: str, uri: str | None) -> Record:
    path = Path(target)
    if path.is_dir():
        return from_run_dir(path)
    if "/" in target or path.exists():
        raise DynconvError(f"{target} is not a run folder: pass a run.dir, or an MLflow run id with --tracking-uri")
    return from_mlflow(target, uri)


def differences(record: Record) -> list[str]:
    """How this checkout (the working directory's git state, the dynconv imported) differs from the run's."""
    from dynconv import __version__

    src, out = record.source, []
    want = src.get(p.GIT_COMMIT)
    here = p.git_state(p.launch_dir())
    if want:
        if here is None:
            out.append(f"this directory is not in a git checkout; the run was launched from commit {want[:12]} "
                       f"of {src.get(p.GIT_ROOT, 'a checkout')}")
        elif here["commit"] != want:
            out.append(f"this checkout is at {here['commit'][:12]}, the run at {want[:12]}: "
                       f"git checkout {want[:12]}")
        elif here["dirty"] == "true":
            out.append("this checkout has uncommitted changes to tracked files")
    if src.get(p.LAUNCH_DIR) and Path(src[p.LAUNCH_DIR]).resolve() != p.launch_dir().resolve():
        out.append(f"the run was launched from {src[p.LAUNCH_DIR]}, this is {p.launch_dir()}: relative paths "
                   "in its config resolve from where you run it")
    if src.get(p.GIT_DIRTY) == "true":
        out.append("the run's checkout had uncommitted changes, which are not recorded: the commit alone may "
                   "not give the same code")
    if src.get(p.VERSION) and src[p.VERSION] != __version__:
        out.append(f"dynconv is {__version__} here, the run used {src[p.VERSION]}")
    package = p.package_checkout()
    if src.get(p.PACKAGE_COMMIT) and package and package["commit"] != src[p.PACKAGE_COMMIT]:
        out.append(f"dynconv's checkout is at {package['commit'][:12]}, the run used {src[p.PACKAGE_COMMIT][:12]}")
    if not src:
        out.append("the run recorded no source (no git commit or version): only its config can be reproduced")
    return out


def plan(record: Record, config_file: Path, run_dir: Path) -> list[str]:
    """The shell lines that reproduce ``record``: where, which commit, which command."""
    lines = []
    if record.source.get(p.LAUNCH_DIR):
        lines.append(f"cd {record.source[p.LAUNCH_DIR]}")
    if record.source.get(p.GIT_COMMIT):
        lines.append(f"git checkout {record.source[p.GIT_COMMIT]}")
    lines.append(f"dynconv train --config {config_file} run.dir={run_dir} run.tags.{REPRODUCES_TAG}={record.name}")
    return lines


def reproduce(target: str, uri: str | None, out: str | None, run: bool, log=print) -> dict | None:
    """Print how to reproduce ``target`` (a run folder or an MLflow run id); with ``run``, train it again into
    ``out`` (default: ``<its run.dir>-reproduced``) and return the training's summary."""
    record = load_record(target, uri)
    run_dir = Path(out) if out else Path(f"{(record.run_dir or 'runs/' + record.name).rstrip('/')}-reproduced")
    if record.run_dir and run_dir.resolve() == Path(record.run_dir).resolve():
        raise DynconvError(f"--out {run_dir} is the run's own folder: pass another, the original is kept")
    # a run folder's own config; an MLflow run's, downloaded beside the new run folder
    config_file = Path(target) / CONFIG if Path(target).is_dir() else run_dir.with_name(run_dir.name + ".yaml")
    log(f"run {record.name}")
    if src := record.source.get(p.COMMAND):
        log(f"  was started with: {src}")
    log("  reproduce with:")
    for line in plan(record, config_file, run_dir):
        log(f"    {line}")
    notes = differences(record)
    for note in notes:
        log(f"  note: {note}")
    if not config_file.exists():
        atomic_write_text(config_file, record.config)
        log(f"  its config: {config_file}")
    if not run:
        return None
    from .config import load_config
    from .training import run_training

    cfg = load_config(config_file, [f"run.dir={run_dir}", f"run.tags.{REPRODUCES_TAG}={record.name}",
                                    "run.name=null"])
    return run_training(cfg)
