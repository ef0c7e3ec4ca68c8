"""Opening an MLflow store: the client (fail-fast HTTP settings), a check that a store exists before a
command that only reads it, and MLflow's many exception types as one line."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from dynconv.errors import DynconvError
from dynconv.extras import require


BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch request


@contextmanager
def store_errors(uri: str, doing: str = "open MLflow store"):
    """MLflow raises many types for a bad URI, a bad filter or an unreachable store: one line instead."""
    try:
        yield
    except DynconvError:
        raise
    except Exception as e:
        error = DynconvError(f"cannot {doing} {uri!r}: {str(e).splitlines()[0][:200] if str(e) else e}")
        error.unreachable = _connection_failure(e)
        raise error from None


_UNREACHABLE = ("Max retries exceeded", "Connection refused", "Connection aborted", "Read timed out",
                "Failed to establish a new connection")


def _connection_failure(e: BaseException | None) -> bool:
    """Whether ``e`` (or what it was raised from) says the server did not answer, rather than refused."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in ("ConnectionError", "ConnectTimeout",
                                                                                  "ReadTimeout", "MaxRetryError"):
            return True
        if any(m in str(e) for m in _UNREACHABLE):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def is_unreachable(e: BaseException) -> bool:
    """A :class:`DynconvError` from :func:`store_errors` for a store that did not answer."""
    return bool(getattr(e, "unreachable", False))


def mlflow_client(uri: str):
    require("track")
    from mlflow.tracking import MlflowClient

    if uri.startswith(("http://", "https://")):
        # fail fast when a server is down (MLflow's defaults retry for minutes); records are buffered instead
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    if "://" not in uri and not uri.startswith("file:"):
        raise DynconvError(f"tracking.uri {uri!r} is not a URI: use sqlite:///path/mlruns.db, file:///dir or http://host:port")
    return MlflowClient(tracking_uri=uri)


def existing_store(uri: str) -> str:
    """``uri`` for a command that only reads: a local store must exist already (MLflow would create an empty
    one for a mistyped path and report no runs)."""
    path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("file://"):] if uri.startswith("file://") else None
    if path is not None and not Path(path).exists():
        raise DynconvError(f"no MLflow store at {path}: check the path ('dynconv train' creates the store, by default "
                           "sqlite:///<parent of run.dir>/mlruns.db)")
    return uri
