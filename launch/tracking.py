"""MLflow tracking: :class:`MlflowRun`, one MLflow run with a durable buffer, and :class:`MlflowTracking`,
the trainer hook that owns the run of a training (params, per-epoch metrics, per-subset results, artifacts,
its final status). Only ``launch/`` (and the layers above it) import mlflow.

Tracking never kills a run: if the store becomes unreachable mid-run (a tracking server restarting, a
network blip), every record is appended to ``run.dir/tracking_buffer.jsonl`` and replayed, in order,
as soon as a later call gets through — or by ``dynconv sync RUN_DIR``. Records are always sent
synchronously (also with ``MLFLOW_ENABLE_ASYNC_LOGGING=true``), so a store that is down is noticed and the
buffer takes the record.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.metric_names import logged_evaluation, logged_name
from dynconv.run_files import (CHECKPOINTS, CONFIG, EVAL_JSON, EVAL_MD, EVAL_PNG, MLFLOW_RUN, MODEL, TRACKING_BUFFER,
                               recorded_mlflow_run)
from dynconv.train import FitResult, Logger, StoppedEarly, TrainingPreempted

from .mlflow_store import BATCH_METRICS, existing_store, is_unreachable, mlflow_client, store_errors

log = logging.getLogger("dynconv")


def default_tracking_uri(run_dir: str | Path) -> str:
    """``sqlite:///<parent of run.dir>/mlruns.db``: a local store, no server needed."""
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlruns.db'}"


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's model-training view


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:  # made before dynconv set the kind
            client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the working directory
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    except Exception:
        # another training created it in the meantime (runs started together: an array, a sweep, a script)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def run_page(server: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in its model-training view (MLflow 3 opens the GenAI view by default,
    whatever the experiment's kind)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def context_tags(run_dir: Path | None = None) -> dict[str, str]:
    """MLflow's standard run context (user, source) and the run's provenance (:mod:`.provenance`: the launch
    directory's git commit and dirty flag, dynconv's version and checkout, the command line — as
    ``run_dir/source.json`` recorded it, else as of now), and the host the run's main process runs on. MLflow's
    own git tags describe the checkout of ``sys.argv[0]`` (dynconv's entry point): replaced by the launch
    directory's."""
    import socket

    from mlflow.tracking.context.registry import resolve_tags

    from .provenance import run_source

    tags = {k: str(v) for k, v in resolve_tags().items() if not k.startswith("mlflow.source.git.")}
    tags.update(run_source(run_dir))
    tags["dynconv.host"] = socket.gethostname()
    return tags


def dataset_input(path: str | Path, context: str, channels: str, classes: list[str] | None, samples: int,
                  dataset: str | None = None):
    """An MLflow dataset input for a data set (an image folder or a .beton): its path, a digest of what it
    holds (names, sizes and times of its files; the .beton's sidecar), and its channels and classes.
    ``dataset``: its name in a mixture (the input is called ``<dataset>/<file name>``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from dynconv.channels import channel_names

    path = Path(path).resolve()
    files = [path] + ([path.with_name(path.name + ".json")] if path.is_file() else sorted(path.rglob("*"))[:100_000])
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(path.parent)}:{st.st_size}:{st.st_mtime_ns};".encode())
    schema = json.dumps({"channels": list(channel_names(channels)), "classes": classes})
    return DatasetInput(Dataset(name=f"{dataset}/{path.name}" if dataset else path.name, digest=h.hexdigest()[:16], source_type="local", source=str(path),
                                schema=schema, profile=json.dumps({"samples": samples})),
                        tags=[InputTag("mlflow.data.context", context)])


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store and the experiment if needed (before jobs that log to it start); its id."""
    with store_errors(uri):
        return _experiment_id(mlflow_client(uri), name, uri)


class MlflowRun:
    """One MLflow run. ``resume=True`` continues the run recorded in ``run_dir`` if there is one."""

    def __init__(self, uri: str, experiment: str, run_dir: Path, run_name: str | None = None,
                 params: dict | None = None, tags: dict | None = None, resume: bool = False,
                 wait_s: float = 0.0):
        """``wait_s``: how long to keep trying a tracking server that does not answer (one being restarted)
        before giving up with one line; records are buffered only once the run exists."""
        self.uri, self.run_dir = uri, Path(run_dir)
        deadline, warned = time.monotonic() + wait_s, False
        while True:
            try:
                return self._open(experiment, run_name, params, tags, resume)
            except DynconvError as e:
                if not is_unreachable(e) or time.monotonic() >= deadline:
                    raise
                if not warned:  # a local flag: self._warned is the buffering warning's, once per run
                    warned = True
                    log.warning(f"MLflow store {uri} does not answer: retrying for up to {wait_s:.0f} s "
                                "(tracking.wait_s)")
                time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _open(self, experiment: str, run_name: str | None, params: dict | None, tags: dict | None,
              resume: bool) -> None:
        uri = self.uri
        with store_errors(uri):
            from mlflow.entities import Param

            self.client = mlflow_client(uri)
            recorded = recorded_mlflow_run(self.run_dir) if resume else None
            if recorded and recorded.get("tracking_uri") == uri:
                self.run_id = recorded["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                exp_id = _experiment_id(self.client, experiment, uri)
                run = self.client.create_run(exp_id, run_name=run_name, tags={**context_tags(self.run_dir), **dict(tags or {})})
                self.run_id = run.info.run_id
                if params:
                    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
                    for i in range(0, len(items), 100):
                        self.client.log_batch(self.run_id, params=items[i:i + 100], synchronous=True)
        atomic_write_text(self.run_dir / MLFLOW_RUN, json.dumps({"run_id": self.run_id, "tracking_uri": uri}))

    @classmethod
    def attach(cls, uri: str, run_id: str, run_dir: Path | None = None) -> "MlflowRun":
        """An existing run (to add artifacts or metrics); with ``run_dir``, the run folder whose buffered
        records it delivers (:meth:`flush`), without writing its ``mlflow_run.json``."""
        self = cls.__new__(cls)
        self.uri, self.run_dir, self.client, self.run_id = uri, run_dir, mlflow_client(existing_store(uri)), run_id
        try:
            self.client.get_run(run_id)
        except Exception:
            raise DynconvError(f"no MLflow run {run_id!r} at {uri}: pass a run id from 'dynconv compare --format csv'") from None
        return self

    # ---- delivery with buffering ----------------------------------------------------------------------
    def _send_all(self, records: list[dict]) -> None:
        """One record, or consecutive metrics records as one ``log_batch``."""
        if records[0]["op"] != "metrics":
            return self._send(records[0])
        from mlflow.entities import Metric

        items = [Metric(k, float(v), r["timestamp"], r["step"]) for r in records for k, v in r["metrics"].items()]
        self.client.log_batch(self.run_id, metrics=items, synchronous=True)

    def _send(self, record: dict) -> None:
        op = record["op"]
        if op == "metrics":
            self._send_all([record])
        elif op == "tags":
            from mlflow.entities import RunTag

            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in record["tags"].items()],
                                  synchronous=True)
        elif op == "artifact":
            self.client.log_artifact(self.run_id, record["path"], record.get("folder"))
        elif op == "table":
            self.client.log_table(self.run_id, data=record["data"], artifact_file=record["file"])
        elif op == "model":
            from .mlflow_model import log_logged_model

            model_id = log_logged_model(self.uri, self.run_id, Path(record["checkpoint"]), Path(record["folder"]),
                                        record["metrics"], record["step"], record.get("register_as"),
                                        record.get("tags"))
            log.info(f"MLflow logged model {model_id}" + (f", registered as {record['register_as']}"
                                                          if record.get("register_as") else ""))
        elif op == "terminate":
            self.client.set_terminated(self.run_id, status=record["status"])
        else:
            raise ValueError(f"unknown tracking record {op!r}")

    @property
    def _buffer(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / TRACKING_BUFFER

    def pending(self) -> list[dict]:
        """Buffered records, oldest first (a torn last line from a crash is ignored)."""
        if self._buffer is None or not self._buffer.exists():
            return []
        records = []
        for line in self._buffer.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def flush(self) -> int:
        """Deliver buffered records in order (consecutive metrics records in one request of up to
        ``BATCH_METRICS`` points); returns how many remain (0 = all delivered)."""
        records = self.pending()
        i = 0
        while i < len(records):
            j, points = i + 1, len(records[i].get("metrics", ()))
            if records[i]["op"] == "metrics":
                while j < len(records) and records[j]["op"] == "metrics" and \
                        points + len(records[j]["metrics"]) <= BATCH_METRICS:
                    points += len(records[j]["metrics"])
                    j += 1
            try:
                self._send_all(records[i:j])
            except Exception:
                rest = records[i:]
                atomic_write_text(self._buffer, "".join(json.dumps(r) + "\n" for r in rest))
                return len(rest)
            i = j
        if self._buffer is not None:
            self._buffer.unlink(missing_ok=True)
        return 0

    def _record(self, record: dict) -> None:
        """Send ``record`` after anything still buffered; if the store is unreachable, buffer it."""
        if self._buffer is None:  # attached to a run without a run folder: no buffering possible
            self._send(record)
            return
        try:
            if self.flush() == 0:
                self._send(record)
                return
        except Exception as e:
            if not getattr(self, "_warned", False):
                self._warned = True
                warnings.warn(f"MLflow store {self.uri} unreachable ({str(e).splitlines()[0][:80]}): buffering "
                              f"to {self._buffer}; it is replayed when the store returns, or run "
                              f"'dynconv sync {self.run_dir}'", stacklevel=3)
        with open(self._buffer, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._record({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()}, "step": step,
                      "timestamp": int(time.time() * 1000)})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._record({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._record({"op": "artifact", "path": str(Path(path).resolve()), "folder": folder})

    def log_table(self, data: dict[str, list], file: str) -> None:
        """A table artifact (``mlflow.log_table``: the UI shows it as a table)."""
        self._record({"op": "table", "data": data, "file": file})

    def log_model(self, checkpoint: Path, folder: Path, metrics: dict[str, float], step: int,
                  register_as: str | None = None, tags: dict[str, str] | None = None) -> None:
        """``checkpoint`` as the run's logged model, ``metrics`` linked to it (:func:`.mlflow_model.log_logged_model`)."""
        self._record({"op": "model", "checkpoint": str(Path(checkpoint).resolve()), "folder": str(Path(folder).resolve()),
                      "metrics": {k: float(v) for k, v in metrics.items()}, "step": step, "register_as": register_as,
                      "tags": tags})

    def log_evaluation(self, report: dict, files: list[Path], metrics: bool = True) -> None:
        """Per-subset metrics as ``subset/RGB/acc``, ``subset/RG/f1``, ``subset/B/macs``, ... (unless ``metrics``
        is False: logged with the model), the per-subset table (``eval_table.json``) and the report files."""
        if metrics:
            self.log_metrics(logged_evaluation(report["subsets"], report["summary"]))
        self.log_table(subset_table(report), EVAL_TABLE)
        for f in files:
            self.log_artifact(f)

    def finish(self, status: str = "FINISHED") -> None:
        self._record({"op": "terminate", "status": status})
        left = len(self.pending())
        if left:
            warnings.warn(f"{left} tracking record(s) not delivered to {self.uri}: run 'dynconv sync {self.run_dir}' "
                          "once the store is reachable", stacklevel=2)


def exit_status(exc: BaseException) -> str:
    """The MLflow status of a run that ends with ``exc``."""
    if isinstance(exc, TrainingPreempted):
        return "SCHEDULED"      # requeued: the resumed job continues the same run
    if isinstance(exc, StoppedEarly):
        return "FINISHED"       # a scheduler's decision, not a failure
    return "FAILED" if isinstance(exc, Exception) else "KILLED"


def stopped_early_tags(reason: str) -> dict[str, str]:
    """The tags of a run that a scheduler stopped before its last epoch."""
    return {"dynconv.stopped_early": "true", "dynconv.stopped_early.reason": reason}


class MlflowTracking(Logger):
    """The trainer hook owning a training's MLflow run: created (or, on resume, reopened) when training
    starts; per-epoch metrics; the final checkpoint, evaluation and report files at the end; the final status
    (``SCHEDULED`` when pre-empted, ``FINISHED`` when a scheduler stopped it early, else ``FAILED``/``KILLED``)."""

    def __init__(self, uri: str, experiment: str, run_dir: Path, run_name: str | None, params: dict, tags: dict,
                 resume: bool, inputs: list | None = None, log_model: bool = False, register_as: str | None = None,
                 wait_s: float = 0.0):
        self.uri, self.args, self.inputs = uri, (experiment, run_dir, run_name, params, tags, resume), inputs or []
        self.wait_s = wait_s
        self.log_model, self.register_as = log_model, register_as
        self.run: MlflowRun | None = None
        self.finished = False

    @property
    def run_id(self) -> str | None:
        return self.run.run_id if self.run else None

    def on_fit_start(self, info: dict) -> None:
        experiment, run_dir, run_name, params, tags, resume = self.args
        self.run = MlflowRun(self.uri, experiment, run_dir, run_name, params=params, tags=tags, resume=resume,
                             wait_s=self.wait_s)
        log.info(f"MLflow run {self.run.run_id} ({self.uri})")
        if self.uri.startswith(("http://", "https://")):
            exp = self.run.client.get_run(self.run.run_id).info.experiment_id
            log.info(f"  in the MLflow UI: {run_page(self.uri, exp, self.run.run_id)}")
        if resume and info.get("start_epoch_metrics"):
            self._log_if_missing(info["start_epoch"], info["start_epoch_metrics"])
        if self.inputs and not resume:
            try:
                self.run.client.log_inputs(self.run.run_id, datasets=[dataset_input(*i) for i in self.inputs])
            except Exception as e:  # noqa: BLE001 - tracking never stops a run
                warnings.warn(f"could not log the data sets to MLflow: {str(e).splitlines()[0][:120]}", stacklevel=2)

    def _log_if_missing(self, epoch: int, metrics: dict[str, float]) -> None:
        """The metrics of the epoch a resumed run continues after, unless the run has them: a job killed between
        that epoch's checkpoint and its metrics (a node that died, SIGKILL) would otherwise leave a gap."""
        logged = {logged_name(k): v for k, v in metrics.items()}
        try:
            self.run.flush()  # records buffered before the kill come first
            if any(r["op"] == "metrics" and r["step"] == epoch for r in self.run.pending()):
                return
            history = self.run.client.get_metric_history(self.run.run_id, next(iter(logged)))
        except Exception as e:  # noqa: BLE001 - tracking never stops a run
            warnings.warn(f"could not check MLflow for epoch {epoch}'s metrics ({str(e).splitlines()[0][:80]}); "
                          "not logging them again", stacklevel=2)
            return
        if not any(m.step == epoch for m in history):
            log.info(f"epoch {epoch}'s metrics were not in the MLflow run (the job ended before it logged them): "
                     "logging them from the checkpoint")
            self.run.log_metrics(logged, step=epoch)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        self.run.log_metrics({logged_name(k): v for k, v in metrics.items()}, step=epoch)

    def on_fit_end(self, result: FitResult) -> None:
        log_final(self.run, Path(self.args[1]), result.final_checkpoint, result.report, result.files,
                  self.log_model, self.register_as)
        self.finished = True

    def on_exception(self, exc: BaseException) -> None:
        if self.run is None or self.finished:  # e.g. Tune ending the thread at the final report
            return
        if isinstance(exc, StoppedEarly):
            self.run.set_tags(stopped_early_tags(exc.reason))
        self.run.finish(exit_status(exc))


EVAL_TABLE = "eval_table.json"  # the per-subset table among the run's artifacts


def subset_table(report: dict) -> dict[str, list]:
    """The final evaluation as columns: one row a subset (accuracy, precision, recall, F1 in %, GMACs)."""
    rows = report["subsets"]
    table = {"subset": list(rows)}
    for key, name, scale, digits in (("accuracy", "accuracy %", 100, 2), ("precision", "precision %", 100, 2),
                                     ("recall", "recall %", 100, 2), ("f1", "f1 %", 100, 2), ("macs", "GMACs", 1e-9, 4)):
        if all(key in r for r in rows.values()):
            table[name] = [round(float(r[key]) * scale, digits) for r in rows.values()]
    return table


def _code_tags(run_dir: Path) -> dict[str, str] | None:
    """The code the run was trained with (git commit and dirty flag, dynconv's version), for its logged model,
    as ``run_dir/source.json`` recorded it."""
    from .provenance import CODE_TAGS, recorded_source

    source = recorded_source(run_dir)
    return None if source is None else {k: v for k, v in source.items() if k in CODE_TAGS}


def log_final(run: MlflowRun, run_dir: Path, checkpoint: Path, report: dict | None, files: list[Path],
              log_model: bool, register_as: str | None = None) -> None:
    """The end of a training's run: the final checkpoint; with ``log_model``, the MLflow logged model with the
    final per-subset metrics linked to it (else those metrics on the run alone); the per-subset table and the
    report files; status FINISHED."""
    run.log_artifact(checkpoint, CHECKPOINTS)
    metrics = logged_evaluation(report["subsets"], report["summary"]) if report is not None else {}
    if log_model:
        from .mlflow_model import MODEL_ARTIFACT

        step = int((report or {}).get("training", {}).get("epochs", 0))
        # the model's files go to a folder in run.dir, kept for replays from the buffer
        run.log_model(checkpoint, run_dir / MODEL_ARTIFACT, metrics, step, register_as, _code_tags(run_dir))
    if report is not None:
        run.log_evaluation(report, files, metrics=not log_model)
    run.finish("FINISHED")


def complete_finished_run(run_dir: Path, done: dict, log_model: bool, register_as: str | None = None) -> bool:
    """Log the end of a run whose training and final evaluation are on disk (``done``: its summary, with its
    MLflow run) but whose MLflow run never got them (the process was killed between writing ``eval.json`` and
    the run's end); ``True`` if it did. A run that has its final evaluation, or whose buffer holds its end, is
    left as it is."""
    uri, run_id, report = done["tracking_uri"], done["run_id"], done["report"]
    try:
        run = MlflowRun.attach(uri, run_id, run_dir)
        run.flush()
        if any(r["op"] == "terminate" for r in run.pending()):
            return False
        first = next(iter(logged_evaluation(report["subsets"], report["summary"])))
        if first in run.client.get_run(run_id).data.metrics:
            return False
        log.info(f"the MLflow run {run_id} lacks the final evaluation (the process ended before it was logged): "
                 "logging it from run.dir")
        files = [run_dir / f for f in (EVAL_JSON, EVAL_MD, EVAL_PNG, CONFIG) if (run_dir / f).exists()]
        log_final(run, run_dir, run_dir / MODEL, report, files, log_model, register_as)
        return True
    except Exception as e:  # noqa: BLE001 - tracking never stops a run
        warnings.warn(f"could not complete MLflow run {run_id}: {str(e).splitlines()[0][:120]}", stacklevel=2)
        return False


def settle_run(run_dir: Path, status: str, tags: dict[str, str], tags_if_open: dict[str, str] | None = None) -> None:
    """Close the MLflow run of ``run_dir`` whose process could not (a trial thread that Ray Tune cut off): its
    buffered records are delivered, a run still RUNNING gets ``status`` (and ``tags_if_open``), and every run
    ``tags``. Tracking never fails the caller: a store that refuses is a warning."""
    info = recorded_mlflow_run(run_dir)
    if info is None:
        return
    try:
        run = MlflowRun.attach(info["tracking_uri"], info["run_id"], run_dir)
        run.flush()
        if run.client.get_run(run.run_id).info.status == "RUNNING":
            if tags_if_open:
                run.set_tags(tags_if_open)
            run.finish(status)
        run.set_tags(tags)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"could not tag MLflow run {info['run_id']}: {str(e).splitlines()[0][:120]}", stacklevel=2)


def run_params(cfg, model_kwargs: dict, stats: tuple, uri: str) -> dict:
    """The run's MLflow params: every config key as it ran, with what the config left unset resolved — the
    model builder's arguments (its defaults included), the normalisation, the run's name and store. A value
    still None means "off" or "not applicable" (``train.res_start``, ``model.switchable_stages``: every stage)
    and is left out, as in the UI a "None" reads as a missing value; the checkpoint records it."""
    from .config import flatten

    params = {k: v for k, v in flatten(cfg).items() if not k.startswith("model.") and v not in (None, {})}
    params["model.name"] = cfg.model.name
    params.update({k: v for k, v in flatten_mapping(model_kwargs, "model.").items() if v is not None})
    if stats[0] is not None:
        params["data.mean"], params["data.std"] = stats
    params["run.name"] = cfg.run.name or Path(cfg.run.dir).name
    params["tracking.uri"] = uri
    return params


def flatten_mapping(values: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"<prefix>a.b": 1}``."""
    out = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(flatten_mapping(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def training_tracker(cfg, data, manifest: dict, resumed: bool, tags: dict | None) -> "MlflowTracking":
    """The MLflow hook of a training: its params, tags (a mixture's datasets too) and data inputs."""
    run_dir = Path(cfg.run.dir)
    uri = cfg.tracking.uri or default_tracking_uri(run_dir)
    tags = {"dynconv.model": cfg.model.name, **cfg.run.tags, **(tags or {})}
    if data.mixture:
        from .mixture import DATASETS_TAG

        tags[DATASETS_TAG] = json.dumps([{"name": p.name, "channels": p.channels} for p in data.parts])
    return MlflowTracking(uri, cfg.tracking.experiment, run_dir, cfg.run.name or run_dir.name,
                          params=run_params(cfg, manifest["model_kwargs"], data.stats, uri), tags=tags,
                          resume=resumed, inputs=data.inputs(), log_model=cfg.tracking.log_model,
                          register_as=cfg.tracking.register_as, wait_s=cfg.tracking.wait_s)


def tag_recorded_run(run_dir: Path, tags: dict[str, str]) -> None:
    """Tag the MLflow run recorded in ``run_dir``, if it has one already (a resumed run: a new run gets its tags
    when it is created); tracking never stops a run."""
    info = recorded_mlflow_run(run_dir)
    if info is None:
        return
    try:
        client = mlflow_client(info["tracking_uri"])
        for key, value in tags.items():
            client.set_tag(info["run_id"], key, value)
    except Exception:  # noqa: BLE001 - a store that is down must not fail the run
        pass


def sync_run_dir(run_dir: str | Path) -> tuple[str, int, int]:
    """Replay ``run_dir``'s buffered tracking records; returns (run id, delivered, remaining)."""
    run_dir = Path(run_dir)
    info = recorded_mlflow_run(run_dir)
    if info is None:
        raise DynconvError(f"{run_dir} has no readable {MLFLOW_RUN}: pass a run.dir of a run that logged to MLflow")
    run = MlflowRun.attach(info["tracking_uri"], info["run_id"], run_dir)
    total = len(run.pending())
    left = run.flush()
    return info["run_id"], total - left, left
