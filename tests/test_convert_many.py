"""`dynconv convert` at scale: 10,000 tiny images, a progress bar, throughput, and all-or-nothing output."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynconv.data import build_source, scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.errors import DynconvError

CLASSES, PER_CLASS, SIDE = 10, 1000, 12


def _grey(label: int) -> int:
    return 20 + 22 * label  # one flat grey level per class: pixels identify the label after JPEG


@pytest.fixture(scope="module")
def many_images(module_tmp):
    """10 classes × 1,000 flat 12 px PNGs (one encoded image per class, written 1,000 times: fast)."""
    root = module_tmp("many") / "images"
    for k in range(CLASSES):
        buf = io.BytesIO()
        Image.new("RGB", (SIDE, SIDE), (_grey(k),) * 3).save(buf, format="PNG")
        folder = root / f"class{k}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            (folder / f"{i:04d}.png").write_bytes(buf.getvalue())
    return root


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_convert_10k_images_with_progress_and_throughput(many_images, tmp_path):
    out = tmp_path / "many.beton"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}  # the session hides progress bars
    proc = subprocess.run([sys.executable, "-m", "dynconv.launch", "convert", str(many_images), str(out), "--workers",
                           "2", "--max-side", "16"], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[1], timeout=240)
    assert proc.returncode == 0, proc.stderr
    n = CLASSES * PER_CLASS
    assert f"{n}/{n}" in proc.stderr  # FFCV's progress bar reached the end
    assert f"{n} images, {CLASSES} classes, 0 skipped" in proc.stdout and "images/s" in proc.stdout
    src = build_source(out, image_size=SIDE, batch_size=1000, num_workers=2)  # sequential: the folder's order
    assert src.num_samples == n and src.classes == [f"class{k}" for k in range(CLASSES)]
    x, y = [torch.cat(t) for t in zip(*src.epoch(0))]
    assert torch.equal(y, torch.arange(CLASSES).repeat_interleave(PER_CLASS))
    grey = x.float().mean((1, 2, 3))
    assert (grey - torch.tensor([_grey(k) for k in y.tolist()])).abs().max() < 3  # each image kept its label


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_convert_failing_midway_leaves_nothing_under_the_final_name(many_images, tmp_path):
    """A file that vanishes after the scan fails the conversion in a writer process (FFCV's writer would wait
    for that process forever): one DynconvError naming the file, and no .beton, sidecar or temporary file."""
    index = scan_image_folder(many_images)
    gone = tmp_path / "vanished.png"
    index.samples[7321] = (gone, index.samples[7321][1])
    out = tmp_path / "out" / "many.beton"
    with pytest.raises(DynconvError, match="vanished.png could not be read while converting"):
        write_beton(index, out, max_side=16, num_workers=2)
    assert list(out.parent.iterdir()) == []
    assert not np.any([p.name.endswith(".tmp") for p in tmp_path.rglob("*")])
