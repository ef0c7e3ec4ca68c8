"""``dynconv wheelhouse``: build a folder of wheels that installs dynconv with its extras on a compute node
with no network and no root (``pip install --no-index --find-links DIR 'dynconv[all]'``); see docs/install.md."""
from __future__ import annotations

NAME = "wheelhouse"


def add_parser(sub) -> None:
    w = sub.add_parser(NAME, help="build a folder of wheels for offline installs on compute nodes "
                       "(FFCV self-contained: its native libraries inside its wheel)",
                       description="On a machine with network (a login node), build a folder of wheels from "
                       "which `pip install --no-index --find-links DIR 'dynconv[all]'` installs dynconv and its "
                       "extras with no network and no root. torch/torchvision are left out (the cluster's own). "
                       "FFCV is built against OpenCV core + imgproc and libturbojpeg and repaired with "
                       "auditwheel, so it carries those libraries. See docs/install.md.")
    w.add_argument("--out", default="wheelhouse", help="the folder to create (default: ./wheelhouse)")
    w.add_argument("--extras", default="all",
                   help="comma-separated extras to include, e.g. ffcv or ffcv,slurm (default: all)")
    w.add_argument("--python", default=None, metavar="PATH",
                   help="the interpreter to build for (default: this one); it needs pip, numpy, cython, "
                        "pkgconfig, setuptools and wheel to build FFCV")
    w.add_argument("--python-version", default=None, metavar="X.Y",
                   help="the target Python; without --python only extras without sdists (not ffcv, deepspeed)")
    w.add_argument("--source", default=None, metavar="DIR", help="the dynconv source tree (default: this one)")
    w.add_argument("--force", action="store_true", help="replace --out if it exists")
    w.add_argument("--skip-check", action="store_true",
                   help="skip the .beton round trip with the repaired FFCV wheel")
    w.set_defaults(func=run)


def run(a) -> int:
    from pathlib import Path

    from ..wheelhouse import build

    extras = [e.strip() for e in a.extras.split(",") if e.strip()]
    summary = build(Path(a.out), extras=extras, python=a.python, python_version=a.python_version,
                    source=Path(a.source) if a.source else None, force=a.force, check=not a.skip_check)
    print(summary.text().rstrip("\n"))
    print(f"wrote {summary.out}/MANIFEST.txt")
    return 0
