"""N-channel (.npy / TIFF) datasets: folder and FFCV paths agree, and a 5-channel model trains end to end."""
import json

import numpy as np
import pytest
import torch

from dynconv.data import build_source, scan_image_folder
from dynconv.data.ffcv_io import write_beton
from dynconv.errors import DynconvError
from helpers import CONFIG, run_cli


@pytest.fixture(scope="module")
def five_channel(module_tmp):
    """3 classes × (24 train, 8 val) 5-channel 20×20 arrays; class = which channel carries a bright square."""
    root = module_tmp("five")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):
        for label in range(3):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 60, (20, 20, 5), dtype=np.uint8)
                arr[5:15, 5:15, label + 1] = 230
                if i % 2 and split == "train":
                    import tifffile

                    tifffile.imwrite(folder / f"{i:03d}.tif", arr.transpose(2, 0, 1))  # C×H×W stack
                else:
                    np.save(folder / f"{i:03d}.npy", arr)
        write_beton(scan_image_folder(root / split), root / f"{split}.beton", max_side=20, num_workers=1)
    return root


def test_arrays_round_trip_exactly(five_channel):
    folder = build_source(five_channel / "train", image_size=20, batch_size=72, num_workers=0)
    beton = build_source(five_channel / "train.beton", image_size=20, batch_size=72, num_workers=1)
    assert folder.num_channels == beton.num_channels == 5
    fx, fy = next(iter(folder.epoch(0)))
    bx, by = next(iter(beton.epoch(0)))
    assert fx.shape == bx.shape == (72, 5, 20, 20) and bx.dtype == torch.uint8
    assert torch.equal(fx, bx) and torch.equal(fy, by)  # NDArray fields are lossless
    meta = json.loads((five_channel / "train.beton.json").read_text())
    assert meta["image_kind"] == "ndarray" and meta["channels"] == 5
    resized = build_source(five_channel / "val.beton", image_size=16, batch_size=4, num_workers=1)
    assert next(iter(resized.epoch(0)))[0].shape == (4, 5, 16, 16)
    # normalisation in the loader is FFCV's RGB operation: arrays stay uint8 (and are resized afterwards)
    kept = build_source(five_channel / "val.beton", image_size=16, batch_size=4, num_workers=1,
                        normalize=([0.5] * 5, [0.25] * 5))
    assert not kept.normalized and next(iter(kept.epoch(0)))[0].dtype == torch.uint8


@pytest.mark.slow
def test_five_channel_model_trains_and_evaluates_all_subsets(five_channel, tmp_path, capsys):

    args = ["train", "--config", CONFIG, f"data.train={five_channel / 'train.beton'}",
            f"data.val={five_channel / 'val.beton'}", "data.channels=[DNA,ER,RNA,AGP,Mito]", "data.image_size=20",
            "model.num_classes=3", "train.epochs=2", "train.batch_size=16", f"run.dir={tmp_path / 'run'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlruns.db'}", "data.num_workers=1"]
    assert run_cli(*args) == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["channels"] == "DNA-ER-RNA-AGP-Mito" and len(report["subsets"]) == 31  # channels by name
    assert report["subsets"]["DNA-ER-RNA-AGP-Mito"]["macs"] > report["subsets"]["AGP"]["macs"]
    # evaluation by name; the checkpoint knows the names, a wrong one is a one-line error
    out = tmp_path / "named.json"
    assert run_cli("eval", tmp_path / "run" / "model.pt", "--data", five_channel / "val.beton", "--subsets",
                   "Mito-ER,DNA", "--json", out) == 0
    assert list(json.loads(out.read_text())["subsets"]) == ["ER-Mito", "DNA"]
    # the MLflow run holds every subset by name, and compare reads it back
    capsys.readouterr()
    assert run_cli("compare", "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--format", "json") == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["full"] == "DNA-ER-RNA-AGP-Mito" and len(row["acc"]) == 31
    assert row["acc"]["ER-Mito"] == pytest.approx(report["subsets"]["ER-Mito"]["accuracy"])
    assert run_cli("eval", tmp_path / "run" / "model.pt", "--data", five_channel / "val.beton", "--subsets", "DN") == 2
    assert "unknown channel(s) 'DN' in subset 'DN'" in capsys.readouterr().err
    # the same data declared as 3 channels is a one-line error
    assert run_cli(*args[:-3], f"run.dir={tmp_path / 'bad'}", "data.channels=RGB", "tracking.enabled=false") == 2
    assert "has 5-channel images but data.channels='RGB'" in capsys.readouterr().err


def test_mixed_channel_counts_are_rejected(tmp_path):
    for i, c in enumerate((4, 5)):
        folder = tmp_path / "d" / "a"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{i}.npy", np.zeros((8, 8, c), np.uint8))
    with pytest.raises(DynconvError, match="same channels"):
        write_beton(scan_image_folder(tmp_path / "d"), tmp_path / "x.beton", max_side=8, num_workers=1)
    assert not (tmp_path / "x.beton").exists()
