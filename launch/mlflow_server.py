"""`dynconv mlflow-server`: a real MLflow tracking server with a database backend and artifact proxying."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from dynconv.errors import DynconvError


def server_command(host: str, port: int, backend: str, artifacts: str | Path, workers: int = 1) -> list[str]:
    if "://" not in backend:
        raise DynconvError(f"--backend {backend!r} is not a database URI: use e.g. sqlite:///mlflow.db")
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    artifacts_uri = Path(artifacts).resolve().as_uri() if "://" not in str(artifacts) else str(artifacts)
    return [str(mlflow_exe), "server", "--host", host, "--port", str(port), "--backend-store-uri", backend,
            "--artifacts-destination", artifacts_uri, "--serve-artifacts", "--workers", str(workers)]


def run_server(host: str, port: int, backend: str, artifacts: str, workers: int = 1) -> int:
    """Run the server in the foreground until interrupted; returns its exit status."""
    if backend.startswith("sqlite:///"):
        Path(backend[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    cmd = server_command(host, port, backend, artifacts, workers)
    print(f"MLflow tracking server on http://{host}:{port} (backend {backend}, artifacts {artifacts})", flush=True)
    print(f"log to it with: dynconv train --config CFG tracking.uri=http://{host}:{port}", flush=True)
    proc = subprocess.Popen(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()
