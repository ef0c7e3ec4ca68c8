"""``dynconv train``: train from a YAML config (``--nproc N``: N local data-parallel processes)."""
from __future__ import annotations

import argparse
import os

NAME = "train"


class _HelpWithKeys(argparse.Action):
    """``--help``: the options, then every config key with its type, default and meaning (from the schema)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from ..config_docs import help_text

        print(parser.format_help() + "\n" + help_text())  # both wrapped to the terminal's width
        parser.exit()


def add_parser(sub) -> None:
    t = sub.add_parser(NAME, help="train a model from a YAML config, then evaluate every channel subset",
                       add_help=False, description="Train from a YAML config (any key can be overridden as "
                       "dotted.key=value), then evaluate every channel subset of the validation set.")
    t.add_argument("-h", "--help", action=_HelpWithKeys, help="show this help and every config key, then exit")
    t.add_argument("--config", required=True)
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this node (torchrun)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config (file + overrides, every key) and exit")
    t.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    t.set_defaults(func=run)


def run(a) -> int:
    if a.print_config:
        from ..config import dump_yaml, load_config

        print(dump_yaml(load_config(a.config, a.overrides)), end="")
        return 0
    if a.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return launch_local(a.nproc, ["train", "--config", a.config, *a.overrides])
    from dynconv.train.distributed import peer_failures, shutdown

    from ..config import load_config
    from ..training import run_training
    from ._common import print_result

    try:
        with peer_failures():
            result = run_training(load_config(a.config, a.overrides))
    finally:
        shutdown()
    if result["report"] is not None:  # the main process reports
        print_result(result)
    return 0


def launch_local(nproc: int, argv: list[str]) -> int:
    """Run ``nproc`` local processes of ``dynconv ARGV`` under torch's elastic launcher (torchrun), in this
    process: the workers' own one-line errors are what the user sees (torchrun's report of a failed child is
    a traceback of its own), and the exit status is the first failed worker's. The workers stop when this
    process is gone, also after a SIGKILL (they watch their parent)."""
    import logging
    import signal

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run as torchrun

    for name in ("torch.distributed.run", "torch.distributed.elastic"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dynconv.launch", *argv])
    try:
        torchrun(args)
    except ChildFailedError as e:
        # a worker's own error before the others the launcher then terminated; else the first to go
        failures = sorted(e.failures.values(), key=lambda f: (f.exitcode <= 0, f.timestamp))
        code = failures[0].exitcode
        return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number, as a shell says
    except SignalException as e:
        from ..console import INTERRUPTED, say

        say(INTERRUPTED)
        return 128 + int(e.sigval) if e.sigval != signal.SIGINT else 130
    return 0
