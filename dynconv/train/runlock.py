"""One training process per run folder: an OS lock (``flock``) on ``run.dir/.lock``, which names its owner
(pid, host, start time) for the error message.

The kernel releases the lock when its holder exits in any way (SIGKILL, OOM killer, a crash), so nothing
stale is ever mistaken for a live owner (a pid check cannot tell an unreaped zombie from a live process).
A lock file left behind by a dead process is taken over, with a warning naming it. ``filelock`` is not used
because it truncates the lock file on every attempt, which would erase the holder's identity.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from ..errors import DynconvError
from ..run_files import LOCK

LOCK_NAME = LOCK


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the file may be removed by its releasing holder between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = self._read(fd)
                os.close(fd)
                raise DynconvError(f"run.dir {self.path.parent} is in use by process {other.get('pid')} on "
                                   f"{other.get('host')} since {other.get('started')}: wait for it, or use another "
                                   "run.dir") from None
            if not self.path.exists() or os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                os.close(fd)  # locked a file that was just removed: try the new one
                continue
            previous = self._read(fd)
            if previous.get("pid") not in (None, self.owner["pid"]):
                warnings.warn(f"reclaiming stale lock {self.path} of process {previous.get('pid')} on "
                              f"{previous.get('host')} (no longer running)", stacklevel=3)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.owner).encode(), 0)
            self._fd = fd
            return self
        raise DynconvError(f"could not take the lock {self.path}: other processes keep replacing it")

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding the lock: a waiter re-checks the inode
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
