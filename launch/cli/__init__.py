"""The ``dynconv`` command line: one module per command, each with ``add_parser(subparsers)`` and
``run(args) -> int``. Heavy libraries are imported inside ``run``, so ``--help`` and ``--version`` are quick.

User errors (:class:`DynconvError`) print one line, ``dynconv: error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import warnings

from dynconv import __version__
from dynconv.errors import DynconvError

from ..console import INTERRUPTED, log_to_stdout, say
from ..provenance import launch_dir_remembered

from . import (ablate, calibrate, cancel, compare, convert, data, demo, env, evaluate, export, flops, jobs, logs,
               mlflow_server, recipes, report, reproduce, submit, sweep, sync, train, wheelhouse)

# in the order `dynconv --help` lists them
COMMANDS = (demo, data, convert, train, evaluate, calibrate, export, flops, ablate, recipes, compare, report,
            reproduce, mlflow_server, sync, sweep, submit, jobs, logs, cancel, env, wheelhouse)


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    say(f"dynconv: warning: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynconv", description="Train and evaluate channel-adaptive CNNs.")
    p.add_argument("--version", action="version", version=f"dynconv {__version__}")
    # the deepspeed launcher passes --local_rank=N first; LOCAL_RANK in the environment says the same
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    # what a command that runs other commands (submit --run) needs of the command line, without importing it
    p.set_defaults(cli_main=main, cli_commands=tuple(command_names()))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def command_names() -> list[str]:
    """The top-level subcommands (``train``, ``eval``, ...)."""
    return [c.NAME for c in COMMANDS]


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warn_one_line
    for category in (DeprecationWarning, FutureWarning):  # libraries' notes to their developers, not to users
        warnings.filterwarnings("ignore", category=category)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    log_to_stdout()
    args = build_parser().parse_args(argv)
    try:
        with launch_dir_remembered():
            return args.func(args)
    except DynconvError as e:
        say(f"dynconv: error: {e}")
        return 2
    except KeyboardInterrupt:
        say(INTERRUPTED)
        return 130
