"""One training process per run folder: ``run.dir/.lock`` names its owner (pid, host, start time).

A second process pointed at the same folder refuses to start; a lock left by a process that no longer
exists on this host (killed, crashed) is reclaimed with a warning.
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

from ..errors import DynconvError

LOCK_NAME = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return self
        raise DynconvError(f"could not take the lock {self.path}: another process keeps creating it")

    def _handle_existing(self) -> None:
        try:
            other = json.loads(self.path.read_text())
        except (OSError, ValueError):
            other = {}
        pid, host = other.get("pid"), other.get("host")
        if host == self.owner["host"] and isinstance(pid, int) and not _alive(pid):
            warnings.warn(f"reclaiming stale lock {self.path} of process {pid} (no longer running)", stacklevel=3)
            self.path.unlink(missing_ok=True)
            return
        if not other:  # unreadable: written by a process killed mid-write; it holds nothing
            self.path.unlink(missing_ok=True)
            return
        raise DynconvError(f"run.dir {self.path.parent} is in use by process {pid} on {host} since "
                           f"{other.get('started')}: wait for it, use another run.dir, or delete {self.path} "
                           "if that process is gone")

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("pid") == self.owner["pid"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
