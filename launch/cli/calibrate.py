"""``dynconv calibrate``: re-estimate per-subset BatchNorm statistics of a checkpoint."""
from __future__ import annotations

NAME = "calibrate"


def add_parser(sub) -> None:
    cb = sub.add_parser(NAME, help="re-estimate per-subset BatchNorm statistics of a checkpoint")
    cb.add_argument("checkpoint")
    cb.add_argument("--data", required=True, help="training images (folder or .beton)")
    cb.add_argument("--batches", type=int, default=20, help="batches per subset")
    cb.add_argument("--batch-size", type=int, default=64)
    cb.add_argument("--out", default=None, help="default: CHECKPOINT with suffix .calibrated.pt")
    cb.add_argument("--seed", type=int, default=0)
    cb.add_argument("--workers", type=int, default=2)
    cb.add_argument("--device", default="auto")
    cb.set_defaults(func=run)


def run(a) -> int:
    from ..calibrate import run_calibrate

    out = run_calibrate(a.checkpoint, a.data, a.batches, a.batch_size, a.out, a.seed, a.workers, a.device)
    print(f"wrote {out}")
    return 0
