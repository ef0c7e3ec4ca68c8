"""Files: atomic writes (a reader sees the old file or the complete new one, never a partial one; Ctrl+C
waits for the write to finish) and reading the user's files with one-line errors."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import yaml

from .errors import DynconvError


class DiskFull(DynconvError):
    """The disk (or quota) filled up during an atomic write; nothing under the final name changed."""


def _disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl+C (SIGINT) during the block takes effect when it ends: a file being written is completed first
    (torch's writer would otherwise turn the interrupt into a RuntimeError from inside its zip writer)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Write to a temporary file beside ``path``; fsync and rename over ``path`` on success only."""
    with interrupts_deferred():
        with _atomic_writer(path, mode) as f:
            yield f


@contextmanager
def _atomic_writer(path: str | Path, mode: str) -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save wraps the OSError of a full disk in a RuntimeError
        if _disk_full(e):
            raise DiskFull(f"no space left on the device while writing {path} (the previous version is intact): "
                           f"free space there or point the output elsewhere") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_writer(path, "w") as f:
        f.write(text)
    return Path(path)


# ---- reading the user's files: one line saying what is wrong with which file ---------------------------

def read_user_file(path: str | Path, what: str, hint: str = "") -> str:
    """The text of ``path``, or a one-line error naming ``what`` it is (e.g. "config file")."""
    path = Path(path)
    if not path.is_file():
        raise DynconvError(f"{what} {path} does not exist" + (f": {hint}" if hint else ""))
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DynconvError(f"{what} {path} cannot be read ({e.__class__.__name__})") from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``1e-3`` (no dot) is a string; YAML 1.2 (and every user) reads a number."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    """YAML with YAML 1.2 numbers (``1e-3`` is a float), as every dynconv file is read."""
    return yaml.load(text, Loader=_Yaml12Loader)


def read_yaml(path: str | Path, what: str, hint: str = ""):
    """A YAML file's content (config, search space, array file), with a one-line error for a bad one."""
    text = read_user_file(path, what, hint)
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise DynconvError(f"{what} {path} is not valid YAML{where}: {str(e).splitlines()[0]}") from None


def read_json(path: str | Path, what: str, hint: str = ""):
    text = read_user_file(path, what, hint)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DynconvError(f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
