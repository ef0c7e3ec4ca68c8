"""MLflow tracking adapter: a trainer :class:`Hook` that logs params, per-epoch metrics, per-subset results
and artifacts. Only this module (and other ``launch/`` code) imports mlflow.

Tracking never kills a run: if the store becomes unreachable mid-run (a tracking server restarting, a
network blip), every record is appended to ``run.dir/tracking_buffer.jsonl`` and replayed, in order,
as soon as a later call gets through — or by ``dynconv sync RUN_DIR``.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text
from dynconv.train import Hook

RUN_FILE = "mlflow_run.json"  # in run.dir: lets a resumed run keep logging to the same MLflow run
BUFFER_FILE = "tracking_buffer.jsonl"  # in run.dir: records not yet delivered to the store


def default_tracking_uri(run_dir: str | Path) -> str:
    """``sqlite:///<parent of run.dir>/mlruns.db``: a local store, no server needed."""
    return f"sqlite:///{Path(run_dir).resolve().parent / 'mlruns.db'}"


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        # fail fast when a server is down (MLflow's defaults retry for minutes); records are buffered instead
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    if "://" not in uri and not uri.startswith("file:"):
        raise DynconvError(f"tracking.uri {uri!r} is not a URI: use sqlite:///path/mlruns.db, file:///dir or http://host:port")
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):  # keep artifacts beside the database, not in the working directory
        artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=artifacts)


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store and the experiment if needed (before jobs that log to it start); its id."""
    try:
        return _experiment_id(mlflow_client(uri), name, uri)
    except DynconvError:
        raise
    except Exception as e:  # MLflow raises many types for a bad URI or an unreachable store
        raise DynconvError(f"cannot open MLflow store {uri!r}: {str(e).splitlines()[0][:160]}") from None


class MlflowTracker(Hook):
    """Owns one MLflow run. ``resume=True`` continues the run recorded in ``run_dir`` if there is one."""

    def __init__(self, uri: str, experiment: str, run_dir: Path, run_name: str | None = None,
                 params: dict | None = None, tags: dict | None = None, resume: bool = False):
        from mlflow.entities import Param

        self.uri, self.run_dir = uri, Path(run_dir)
        try:
            self.client = mlflow_client(uri)
            previous = self._recorded_run() if resume else None
            if previous:
                self.run_id = previous
                self.client.update_run(self.run_id, status="RUNNING")
            else:
                exp_id = _experiment_id(self.client, experiment, uri)
                run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
                self.run_id = run.info.run_id
                if params:
                    items = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
                    for i in range(0, len(items), 100):
                        self.client.log_batch(self.run_id, params=items[i:i + 100])
        except DynconvError:
            raise
        except Exception as e:  # MLflow raises many types for a bad URI or an unreachable store
            raise DynconvError(f"cannot open MLflow store {uri!r}: {str(e).splitlines()[0][:160]}") from None
        atomic_write_text(self.run_dir / RUN_FILE, json.dumps({"run_id": self.run_id, "tracking_uri": uri}))

    @classmethod
    def attach(cls, uri: str, run_id: str) -> "MlflowTracker":
        """A tracker for an existing run (to add artifacts or metrics), without touching any run folder."""
        self = cls.__new__(cls)
        self.uri, self.run_dir, self.client, self.run_id = uri, None, mlflow_client(uri), run_id
        try:
            self.client.get_run(run_id)
        except Exception:
            raise DynconvError(f"no MLflow run {run_id!r} at {uri}: pass a run id from 'dynconv compare --format csv'") from None
        return self

    def _recorded_run(self) -> str | None:
        f = self.run_dir / RUN_FILE
        if not f.exists():
            return None
        info = json.loads(f.read_text())
        return info["run_id"] if info.get("tracking_uri") == self.uri else None

    # ---- delivery with buffering ----------------------------------------------------------------------
    def _send(self, record: dict) -> None:
        op = record["op"]
        if op == "metrics":
            from mlflow.entities import Metric

            items = [Metric(k, float(v), record["timestamp"], record["step"]) for k, v in record["metrics"].items()]
            self.client.log_batch(self.run_id, metrics=items)
        elif op == "artifact":
            self.client.log_artifact(self.run_id, record["path"], record.get("folder"))
        elif op == "terminate":
            self.client.set_terminated(self.run_id, status=record["status"])
        else:
            raise ValueError(f"unknown tracking record {op!r}")

    @property
    def _buffer(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / BUFFER_FILE

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
        """Deliver buffered records in order; returns how many remain (0 = all delivered)."""
        records = self.pending()
        for i, record in enumerate(records):
            try:
                self._send(record)
            except Exception:
                rest = records[i:]
                atomic_write_text(self._buffer, "".join(json.dumps(r) + "\n" for r in rest))
                return len(rest)
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

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self._record({"op": "artifact", "path": str(Path(path).resolve()), "folder": folder})

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.log_metrics(metrics, step=epoch)

    def on_fit_end(self, final_checkpoint: Path) -> None:
        self.log_artifact(final_checkpoint, "checkpoints")

    def log_evaluation(self, results: dict[str, dict[str, float]], summary: dict[str, float],
                       files: list[Path]) -> None:
        """Per-subset metrics as ``acc_RGB``, ``f1_RG``, ``macs_B``, ... plus the report files."""
        names = {"accuracy": "acc", "precision": "precision", "recall": "recall", "f1": "f1",
                 "f1_macro": "f1_macro", "macs": "macs"}
        flat = {f"{names[k]}_{subset}": v for subset, row in results.items() for k, v in row.items()}
        self.log_metrics({**flat, **summary})
        for f in files:
            self.log_artifact(f)

    def finish(self, status: str = "FINISHED") -> None:
        self._record({"op": "terminate", "status": status})
        left = len(self.pending())
        if left:
            warnings.warn(f"{left} tracking record(s) not delivered to {self.uri}: run 'dynconv sync {self.run_dir}' "
                          "once the store is reachable", stacklevel=2)


def sync_run_dir(run_dir: str | Path) -> tuple[str, int, int]:
    """Replay ``run_dir``'s buffered tracking records; returns (run id, delivered, remaining)."""
    run_dir = Path(run_dir)
    info_file = run_dir / RUN_FILE
    if not info_file.exists():
        raise DynconvError(f"{run_dir} has no {RUN_FILE}: pass a run.dir of a run that logged to MLflow")
    info = json.loads(info_file.read_text())
    tracker = MlflowTracker.attach(info["tracking_uri"], info["run_id"])
    tracker.run_dir = run_dir
    total = len(tracker.pending())
    left = tracker.flush()
    return info["run_id"], total - left, left
