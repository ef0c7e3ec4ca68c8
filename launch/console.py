"""What a user sees of the application: the trainer's progress messages (the ``dynconv`` logger) on the
terminal or in a job's output file (the command line and the job callables call :func:`log_to_stdout`; the
library itself configures no handler), and one-line messages on stderr (:func:`say`)."""
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


INTERRUPTED = "dynconv: interrupted (checkpoints written so far are kept)"


def say(text: str) -> None:
    """One line on stderr in one write: the processes of a data-parallel run share it, and ``print`` writes
    the text and its newline separately, so their lines could interleave."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
