"""Where the trainer's progress messages (the ``dynconv`` logger) go for a user: the terminal, or a job's
output file. The command line and the job callables call :func:`log_to_stdout`; the library itself
configures no handler."""
from __future__ import annotations

import logging
import sys


class _Stdout(logging.Handler):
    """Each message as a line on whatever ``sys.stdout`` is at that moment (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout, flush=True)


def log_to_stdout() -> None:
    logger = logging.getLogger("dynconv")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        logger.addHandler(_Stdout())
    logger.setLevel(logging.INFO)
    logger.propagate = False
