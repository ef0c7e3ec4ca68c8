"""``dynconv export``: a DeepSpeed (ZeRO) checkpoint -> plain weights for ``dynconv eval``."""
from __future__ import annotations

NAME = "export"


def add_parser(sub) -> None:
    ex = sub.add_parser(NAME, help="consolidate a DeepSpeed (ZeRO) checkpoint into plain weights for 'dynconv eval'")
    ex.add_argument("checkpoint", help="run.dir, run.dir/checkpoints, a DeepSpeed checkpoint folder or a .pt file")
    ex.add_argument("out", metavar="OUT.pt")
    ex.set_defaults(func=run)


def run(a) -> int:
    from ..export import run_export

    out, what = run_export(a.checkpoint, a.out)
    print(f"wrote {out}: fp32 weights from {what}")
    return 0
