"""``dynconv data synth``: write a deterministic synthetic ImageFolder dataset (shapes, textures or sensors)."""
from __future__ import annotations

from dynconv.choices import SYNTH_KINDS

NAME = "data"


def add_parser(sub) -> None:
    data = sub.add_parser(NAME, help="dataset utilities").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write a deterministic synthetic ImageFolder dataset (--kind shapes | textures | sensors)")
    s.add_argument("out_dir")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--train-per-class", type=int, default=100)
    s.add_argument("--val-per-class", type=int, default=30)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    s.add_argument("--kind", default="shapes", choices=SYNTH_KINDS,
                   help="shapes: colour + shape (easy); textures: oriented 1/f textures with photo-like channels; "
                   "sensors: the shapes scenes in 5 bands R, G, UV, IR, Depth (.npy arrays)")
    s.set_defaults(func=run)


def run(a) -> int:
    from tqdm.auto import tqdm

    from dynconv.data.synth import CHANNELS, write_dataset

    out = write_dataset(a.out_dir, a.classes, a.train_per_class, a.val_per_class, a.size, a.seed,
                        overwrite=a.overwrite, progress=lambda jobs: tqdm(jobs, desc="synth", unit="img", disable=None),
                        kind=a.kind)
    n = a.classes * (a.train_per_class + a.val_per_class)
    print(f"wrote {n} images of {a.classes} classes to {out}/train and {out}/val (channels {CHANNELS[a.kind]})")
    return 0
