import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dynconv.data import AugmentParams, build_source, scan_image_folder
from dynconv.data.augment import apply, sample, warp
from dynconv.data.synth import class_names, write_dataset
from dynconv.errors import DynconvError


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


def test_synth_is_byte_identical_for_a_seed(tmp_path):
    a = write_dataset(tmp_path / "a", num_classes=3, train_per_class=4, val_per_class=2, size=24, seed=5)
    b = write_dataset(tmp_path / "b", num_classes=3, train_per_class=4, val_per_class=2, size=24, seed=5)
    c = write_dataset(tmp_path / "c", num_classes=3, train_per_class=4, val_per_class=2, size=24, seed=6)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 3 * 6 and da == db
    assert da.keys() == dc.keys() and da != dc
    assert sorted(p.name for p in (a / "train").iterdir()) == class_names(3)


def test_synth_refuses_to_overwrite(tmp_path):
    write_dataset(tmp_path / "d", num_classes=2, train_per_class=1, val_per_class=1, size=16)
    with pytest.raises(DynconvError, match="--overwrite"):
        write_dataset(tmp_path / "d", num_classes=2, train_per_class=1, val_per_class=1, size=16)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left behind


def test_synth_classes_differ_in_colour_channel_by_channel():
    """Palettes 0 and 1 must differ in every channel (so single channels keep some colour information)."""
    from dynconv.data.synth import palette

    warm, cool = np.array(palette(0)[1]), np.array(palette(1)[1])
    assert (abs(warm - cool) > 0.1).all()


def test_ffcv_round_trip_matches_folder(tiny_data):
    folder = build_source(tiny_data / "val", image_size=32, batch_size=16, num_workers=0)
    beton = build_source(tiny_data / "val.beton", image_size=32, batch_size=16, num_workers=1)
    assert (folder.backend, beton.backend) == ("torchvision", "ffcv")
    assert folder.num_samples == beton.num_samples == 64
    assert beton.classes == folder.classes
    fx, fy = map(torch.cat, zip(*folder.epoch(0)))
    bx, by = map(torch.cat, zip(*beton.epoch(0)))
    assert fx.shape == bx.shape == (64, 3, 32, 32) and fx.dtype == bx.dtype == torch.uint8
    assert torch.equal(fy, by)  # sequential order: same labels in the same order
    # FFCV re-encodes as JPEG: pixels agree closely, not exactly
    assert (fx.float() - bx.float()).abs().mean() < 6


def test_beton_resized_on_load(tiny_data):
    src = build_source(tiny_data / "val.beton", image_size=20, batch_size=8, num_workers=1)
    x, y = next(iter(src.epoch(0)))
    assert x.shape == (8, 3, 20, 20) and y.dtype == torch.int64


def test_train_shuffle_depends_on_seed_and_epoch(tiny_data):
    def labels(seed, epoch):
        src = build_source(tiny_data / "train", image_size=32, batch_size=160, num_workers=0, train=True, seed=seed)
        return torch.cat([y for _, y in src.epoch(epoch)])

    assert torch.equal(labels(0, 1), labels(0, 1))
    assert not torch.equal(labels(0, 1), labels(0, 2))


def test_flips_are_exact():
    x = torch.rand(3, 3, 9, 10)
    g = torch.Generator().manual_seed(0)
    h = apply(x, sample(3, AugmentParams(hflip=1, vflip=0, rotation=0, perspective=0), g))
    v = apply(x, sample(3, AugmentParams(hflip=0, vflip=1, rotation=0, perspective=0), g))
    assert torch.equal(h, x.flip(-1)) and torch.equal(v, x.flip(-2))
    half = sample(400, AugmentParams(hflip=0.5, vflip=0, rotation=0, perspective=0), g)
    assert 150 < int(half.hflip.sum()) < 250 and not half.vflip.any() and half.maps is None


def test_identity_map_resamples_exactly_enough():
    x = torch.rand(2, 3, 9, 10)
    torch.testing.assert_close(warp(x, torch.eye(3, dtype=torch.float64).expand(2, 3, 3)), x)


def test_rotation_moves_a_marker():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 18] = 1  # a marker right of centre
    m = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)  # 90°
    y = warp(x, m)
    r, c = divmod(int(y.flatten().argmax()), 21)
    assert (r, c) in {(2, 10), (18, 10)} and y.max() > 0.99


# ---- bad input ---------------------------------------------------------------------------------------

def _copy_val(tiny_data, tmp_path) -> Path:
    root = tmp_path / "val"
    shutil.copytree(tiny_data / "val", root)
    return root


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(DynconvError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")


def test_empty_class_folder_is_an_error(tiny_data, tmp_path):
    root = _copy_val(tiny_data, tmp_path)
    (root / "zz_empty").mkdir()
    with pytest.raises(DynconvError, match="zz_empty has no readable images"):
        scan_image_folder(root)


def test_corrupt_and_non_image_files_are_skipped_or_strict(tiny_data, tmp_path):
    root = _copy_val(tiny_data, tmp_path)
    cls = sorted(root.iterdir())[0]
    (cls / "notes.txt").write_text("not an image")
    good = sorted(cls.glob("*.jpg"))[0]
    (cls / "broken.jpg").write_bytes(good.read_bytes()[:100])
    (cls / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipped 3 unreadable"):
        index = scan_image_folder(root)
    assert len(index.samples) == 64 and len(index.skipped) == 3
    with pytest.raises(DynconvError, match="--strict"):
        scan_image_folder(root, strict=True)


def test_beton_of_another_schema_is_an_error(tmp_path):
    from ffcv.fields import FloatField, IntField
    from ffcv.writer import DatasetWriter

    path = tmp_path / "other.beton"
    DatasetWriter(str(path), {"x": FloatField(), "y": IntField()}, num_workers=1).from_indexed_dataset(
        [(float(i), i) for i in range(4)])
    with pytest.raises(DynconvError, match="expected"):
        build_source(path, image_size=8, batch_size=2)
    (tmp_path / "junk.beton").write_bytes(b"\0" * 64)
    with pytest.raises(DynconvError, match="not a readable FFCV"):
        build_source(tmp_path / "junk.beton", image_size=8, batch_size=2)


def test_grayscale_rgba_and_mixed_sizes_load_as_rgb(tmp_path):
    from PIL import Image

    root = tmp_path / "mixed"
    for cls, (mode, size) in {"a": ("L", (40, 30)), "b": ("RGBA", (17, 50)), "c": ("RGB", (64, 64))}.items():
        (root / cls).mkdir(parents=True)
        Image.new(mode, size, 128).save(root / cls / "x.png")
    src = build_source(root, image_size=24, batch_size=3, num_workers=0)
    x, y = next(iter(src.epoch(0)))
    assert x.shape == (3, 3, 24, 24) and y.tolist() == [0, 1, 2] and src.num_channels == 3


def test_ffcv_batches_stay_valid_when_kept(tiny_data):
    """FFCV refills its output buffers every few batches; DataSource hands out batches that callers may keep
    (evaluation keeps the labels, calibration the images)."""
    folder = build_source(tiny_data / "val", image_size=32, batch_size=4, num_workers=0)
    beton = build_source(tiny_data / "val.beton", image_size=32, batch_size=4, num_workers=1)
    kept = list(beton.epoch(0))  # 16 batches, more than FFCV's buffer slots
    fx, fy = map(torch.cat, zip(*folder.epoch(0)))
    bx, by = map(torch.cat, zip(*kept))
    assert torch.equal(fy, by) and (fx.float() - bx.float()).abs().mean() < 6


def test_ffcv_views_are_valid_until_the_next_batch(tiny_data):
    """copy=False (the trainer, one micro-batch a step) hands out FFCV's buffers: each batch, used before the
    next is drawn, equals the kept copy of the same epoch."""
    source = build_source(tiny_data / "train.beton", image_size=32, batch_size=16, num_workers=1, train=True)
    kept = [x for x, _ in source.epoch(2)]
    views = []
    for x, _ in source.epoch(2, copy=False):
        views.append(x.clone())  # used now, before the next batch is drawn
    assert len(views) == len(kept) and all(torch.equal(a, b) for a, b in zip(views, kept))


def test_folder_and_beton_give_the_same_pixels(tmp_path):
    """`dynconv convert --size S --store raw` stores what the folder loader produces at S: the two paths
    evaluate identically. With JPEG storage the difference is the re-encoding alone, a few levels."""
    from dynconv.data.ffcv_io import write_beton

    root = write_dataset(tmp_path / "t", num_classes=2, train_per_class=1, val_per_class=24, size=40, kind="textures")
    folder = torch.cat([x for x, _ in build_source(root / "val", image_size=32, batch_size=16, num_workers=0).epoch(0)])
    diffs = {}
    for store in ("raw", "jpg"):
        beton = write_beton(scan_image_folder(root / "val"), tmp_path / f"{store}.beton", size=32, store=store,
                            num_workers=1)
        ffcv = torch.cat([x for x, _ in build_source(beton, image_size=32, batch_size=16, num_workers=1).epoch(0)])
        diffs[store] = (folder.float() - ffcv.float()).abs().mean().item()
    assert diffs["raw"] == 0.0
    assert 0 < diffs["jpg"] < 8, diffs  # JPEG at quality 90 on noisy textures: ~4 of 255 levels on average


LOADER_AUGMENTS = {"warps": AugmentParams(hflip=0.5, vflip=0.5, rotation=15, perspective=0.2, perspective_p=0.5),
                   "flips": AugmentParams(hflip=0.5, vflip=0.5, rotation=0, perspective=0),  # the compiled pass
                   None: None}


@pytest.mark.parametrize("augment", LOADER_AUGMENTS)
def test_normalising_in_the_ffcv_pipeline_gives_the_batch_transforms_batches(tiny_data, augment):
    """CPU training normalises inside FFCV's pipeline (build_source(normalize=...)): the same float batches,
    in the same order, with loader-side augmentation, as normalising the uint8 batches afterwards."""
    from dynconv.data import BatchTransform

    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    aug, train = LOADER_AUGMENTS[augment], augment is not None
    kw = dict(image_size=32, batch_size=16, num_workers=2, train=train, seed=3, augment=aug)
    path = tiny_data / ("train.beton" if train else "val.beton")
    plain, fused = build_source(path, **kw), build_source(path, **kw, normalize=(mean, std))
    assert not plain.normalized and fused.normalized
    transform = BatchTransform(mean, std, torch.device("cpu"))
    n = 0
    for (px, py), (fx, fy) in zip(plain.epoch(1), fused.epoch(1)):
        assert px.dtype == torch.uint8 and fx.dtype == torch.float32 and torch.equal(py, fy)
        # bit for bit: e.g. evaluating a run's checkpoint on its image folder reproduces its report exactly
        assert torch.equal(transform(fx), transform(px))
        n += len(py)
    assert n == plain.num_samples - plain.num_samples % 16 * train
    (px, _), (fx, _) = next(iter(plain.epoch(0, augment=False))), next(iter(fused.epoch(0, augment=False)))
    assert fx.dtype == torch.float32 and torch.equal(transform(fx), transform(px))


def test_device_augmentation_of_a_normalised_batch_is_refused():
    """Its warp would fill the outside with 0 in normalised units (grey), not black."""
    from dynconv.data import BatchTransform

    t = BatchTransform((0.5,) * 3, (0.25,) * 3, torch.device("cpu"), AugmentParams(rotation=15))
    with pytest.raises(ValueError, match="uint8"):
        t(torch.zeros(2, 3, 8, 8))


def test_ffcv_leaves_the_training_threads_alone(tiny_data):
    """FFCV used to reset torch's intra-op threads to data.num_workers every epoch (capping CPU training)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        source = build_source(tiny_data / "train.beton", image_size=32, batch_size=16, num_workers=1, train=True)
        for epoch in range(2):
            for _ in source.epoch(epoch):
                pass
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_importing_ffcv_does_not_cap_the_training_threads():
    """ffcv's import sets torch's intra-op threads to 1 (CPU training on one core until the first epoch, and
    for good where nothing set them again): dynconv puts the count back. Its table of image modes is a plain
    dict (a numba typed dict compiled for ~6 s at every import) with FFCV's values, and numba's typed Dict is
    left as it was for everyone else. A fresh process, since here ffcv is imported already."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(3); import dynconv.data.ffcv_io, ffcv, numba.typed; "
            "from numba.typed.typeddict import Dict; from ffcv.fields.rgb_image import IMAGE_MODES; "
            "print(type(IMAGE_MODES).__name__, sorted(IMAGE_MODES.items()), numba.typed.Dict is Dict); "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    modes, threads = out.stdout.strip().splitlines()[-2:]
    assert threads == "3"
    assert modes == "dict [('jpg', 0), ('raw', 1)] True"


def test_channel_stats_are_those_of_every_pixel_and_bounded():
    from dynconv.data.stats import channel_stats, sample_indices

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (5, 4 + i, 6), dtype=np.uint8) for i in range(7)]  # 5 channels, mixed sizes
    mean, std = channel_stats(len(images), images.__getitem__, limit=100)
    pixels = np.concatenate([im.reshape(5, -1) for im in images], axis=1) / 255.0
    assert mean == pytest.approx(pixels.mean(1), abs=1e-6) and std == pytest.approx(pixels.std(1), abs=1e-6)
    assert sample_indices(7, 100) == list(range(7))
    picked = sample_indices(10_001, 3)
    assert picked == [0, 5000, 10_000]
    with pytest.raises(DynconvError, match=r"channel\(s\) \[1\] are constant"):
        channel_stats(1, lambda i: np.stack([images[0][0], np.zeros_like(images[0][0])]), limit=10)


def test_data_mean_std_auto_from_a_beton_or_a_folder(tiny_data, tmp_path, caplog):
    """convert records the stored pixels' statistics; a folder is measured when training starts, from the
    same pixels (raw store at the training size: equal); an older .beton without them is one line."""
    import json
    import logging

    from dynconv.data.ffcv_io import read_beton_meta, sidecar_path
    from dynconv.data.stats import folder_stats
    from dynconv.launch.config import load_config
    from dynconv.launch.training_data import TrainingData
    from helpers import CONFIG

    def _stats(cfg):  # the one dataset's normalisation, as training resolves it
        return TrainingData.plan(cfg).stats

    meta = read_beton_meta(tiny_data / "train.beton")
    assert meta["stats_images"] == 320 and len(meta["mean"]) == len(meta["std"]) == 3
    assert meta["mean"] == pytest.approx(folder_stats(tiny_data / "train", 32)[0], abs=1e-6)
    common = ["data.image_size=32", "data.mean=auto", "data.std=auto"]
    with caplog.at_level(logging.INFO, logger="dynconv"):
        beton = _stats(load_config(CONFIG, [f"data.train={tiny_data / 'train.beton'}", *common]))
        folder = _stats(load_config(CONFIG, [f"data.train={tiny_data / 'train'}", *common]))
    assert beton == (meta["mean"], meta["std"]) == folder  # the raw store holds the folder loader's pixels
    assert "data.mean/std=auto: mean" in caplog.text and "recorded by 'dynconv convert' from 320 images" in caplog.text
    mixed = _stats(load_config(CONFIG, [f"data.train={tiny_data / 'train.beton'}", "data.mean=auto",
                                        "data.std=[0.2, 0.2, 0.2]"]))
    assert mixed == (meta["mean"], [0.2, 0.2, 0.2])
    old = tmp_path / "old.beton"
    shutil.copy(tiny_data / "train.beton", old)
    sidecar_path(old).write_text(json.dumps({k: v for k, v in meta.items() if k not in ("mean", "std")}))
    with pytest.raises(DynconvError, match="records no channel statistics .* run 'dynconv convert' again"):
        _stats(load_config(CONFIG, [f"data.train={old}", *common]))


def test_numbas_finaliser_error_is_dropped_and_nothing_else():
    """numba's dispatcher finaliser raises KeyError when FFCV's compiled pipelines are collected (one traceback
    each after a run); only that one is dropped."""
    import os
    import types

    from dynconv.data.ffcv_io import numba_finalizer_filter

    def unraisable(filename):
        try:
            exec(compile("raise KeyError('overload')", filename, "exec"))
        except KeyError as e:
            return types.SimpleNamespace(exc_type=KeyError, exc_value=e, exc_traceback=e.__traceback__,
                                         err_msg="Exception ignored in", object=None)

    seen = []
    hook = numba_finalizer_filter(seen.append)
    hook(unraisable(os.path.join("site-packages", "numba", "core", "dispatcher.py")))
    assert seen == []
    mine = unraisable(os.path.join("site-packages", "mine", "code.py"))
    hook(mine)
    assert seen == [mine]


def test_an_ffcv_epoch_left_early_stops_its_thread(tiny_data):
    """Calibration reads a few batches of an epoch and closes it: FFCV's epoch thread (which prefetches into
    buffers it holds) must end, not wait forever to hand over its next batch — one per validation otherwise."""
    import threading

    from ffcv.loader.epoch_iterator import EpochIterator

    def epoch_threads():
        return [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t.is_alive()]

    source = build_source(tiny_data / "train.beton", image_size=32, batch_size=4, num_workers=1, train=True)
    before = len(epoch_threads())
    for k in range(3):
        epoch = source.epoch(k, copy=False)
        next(epoch)
        assert len(epoch_threads()) > before  # it prefetches the next batches meanwhile
        epoch.close()
    deadline = time.monotonic() + 10
    while len(epoch_threads()) > before and time.monotonic() < deadline:  # each ends within 0.5 s
        time.sleep(0.1)
    assert len(epoch_threads()) == before
