"""``dynconv env``: the report to paste into a bug report — versions, GPUs, CPUs and threads, the Slurm job,
which extras import, and where FFCV's native libraries load from."""
from __future__ import annotations

NAME = "env"


def add_parser(sub) -> None:
    e = sub.add_parser(NAME, help="print versions, GPUs, CPUs, Slurm variables, extras and FFCV's libraries "
                       "(paste it into a bug report)",
                       description="Print what a bug report needs to know of this machine: the versions of "
                       "dynconv (and its git commit), Python, torch, CUDA and the extras; the GPUs; CPUs and "
                       "threads; the Slurm job's variables; which extras import; and where FFCV's native "
                       "libraries (libturbojpeg, OpenCV) load from. A missing or broken package is one line.")
    e.add_argument("--json", action="store_true", help="print the same as a JSON object (for tooling)")
    e.set_defaults(func=run)


def run(a) -> int:
    import json

    from ..env_report import format_text, gather

    report = gather()
    print(json.dumps(report, indent=2) if a.json else format_text(report).rstrip("\n"))
    return 0
