"""``dynconv mlflow-server``: a real MLflow tracking server (database backend, artifact proxy)."""
from __future__ import annotations

NAME = "mlflow-server"


def add_parser(sub) -> None:
    ms = sub.add_parser(NAME, help="start an MLflow tracking server (database backend, artifact proxy)")
    ms.add_argument("--host", default="127.0.0.1")
    ms.add_argument("--port", type=int, default=5000)
    ms.add_argument("--backend", default="sqlite:///mlflow-server/mlflow.db")
    ms.add_argument("--artifacts", default="mlflow-server/artifacts")
    ms.add_argument("--workers", type=int, default=1)
    ms.set_defaults(func=run)


def run(a) -> int:
    from dynconv.extras import require

    require("track")
    from ..mlflow_server import run_server

    return run_server(a.host, a.port, a.backend, a.artifacts, a.workers)
