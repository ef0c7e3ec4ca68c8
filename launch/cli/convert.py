"""``dynconv convert``: an ImageFolder dataset -> an FFCV ``.beton`` file."""
from __future__ import annotations

import os

from dynconv.choices import BETON_STORES

NAME = "convert"


def add_parser(sub) -> None:
    c = sub.add_parser(NAME, help="convert an ImageFolder dataset to an FFCV .beton file")
    c.add_argument("image_folder")
    c.add_argument("out", metavar="OUT.beton")
    c.add_argument("--max-side", type=int, default=256)
    c.add_argument("--jpeg-quality", type=int, default=90)
    c.add_argument("--size", type=int, default=None,
                   help="centre-crop and resize every image to SIZE x SIZE as the folder loader does: training at "
                        "data.image_size=SIZE then sees the folder's pixels (exactly, with --store raw)")
    c.add_argument("--store", choices=BETON_STORES, default="jpg", help="RGB images as JPEG (smaller) or raw pixels")
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    c.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")
    c.set_defaults(func=run)


def run(a) -> int:
    import time

    from dynconv.data import scan_image_folder
    from dynconv.extras import require

    write_beton = require("ffcv", "dynconv.data.ffcv_io").write_beton

    index = scan_image_folder(a.image_folder, strict=a.strict)
    t0 = time.perf_counter()
    out = write_beton(index, a.out, max_side=a.max_side, jpeg_quality=a.jpeg_quality, num_workers=a.workers,
                      size=a.size, store=a.store)
    dt = time.perf_counter() - t0
    n = len(index.samples)
    print(f"wrote {out}: {n} images, {len(index.classes)} classes, {len(index.skipped)} skipped, "
          f"{n / max(dt, 1e-9):.0f} images/s")
    return 0
