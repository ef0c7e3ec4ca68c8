"""Loader-side augmentation (data.augment.where=loader): the FFCV pipeline operation (OpenCV) and the
torchvision per-sample transform (torch) against the device-side batched transform."""
import math

import numpy as np
import pytest
import torch

from dynconv.data import AugmentParams, build_source
from dynconv.data.augment import SampleAugment, apply, sample, sample_uniforms
from dynconv.data.ffcv_io import LoaderAugment
from dynconv.errors import DynconvError
from dynconv.launch.config import load_config
from helpers import run_cli, train_args

FLIPS_ONLY = {"rotation": 0, "perspective": 0}


def _ffcv_side(params: AugmentParams, nchw: torch.Tensor, epoch: int, indices, seed: int = 0,
               threads: int = 1) -> torch.Tensor:
    """Run the FFCV pipeline operation on a uint8 NCHW batch (as HWC, the layout it gets from FFCV)."""
    hwc = np.ascontiguousarray(nchw.permute(0, 2, 3, 1).numpy())
    op = LoaderAugment(SampleAugment(params, seed), threads, channels_first=False)
    op.set_epoch(epoch)
    return torch.from_numpy(op(hwc, np.empty_like(hwc), np.asarray(indices))).permute(0, 3, 1, 2)


def _torch_side(params: AugmentParams, nchw: torch.Tensor, epoch: int, indices, seed: int = 0) -> torch.Tensor:
    return SampleAugment(params, seed)(nchw, epoch, indices)


SIDES = {"ffcv": _ffcv_side, "torchvision": _torch_side}


@pytest.mark.parametrize("side", SIDES)
def test_loader_flips_are_exact_on_a_known_image(side):
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.uint8).view(2, 3, 5, 7)
    run = SIDES[side]
    assert torch.equal(run(AugmentParams(hflip=1, vflip=0, **FLIPS_ONLY), x, 0, [0, 1]), x.flip(-1))
    assert torch.equal(run(AugmentParams(hflip=0, vflip=1, **FLIPS_ONLY), x, 0, [0, 1]), x.flip(-2))
    assert torch.equal(run(AugmentParams(hflip=1, vflip=1, **FLIPS_ONLY), x, 0, [0, 1]), x.flip(-1, -2))
    assert torch.equal(run(AugmentParams(hflip=0, vflip=0, **FLIPS_ONLY), x, 0, [0, 1]), x)


def test_ffcv_op_handles_channel_first_arrays():
    """N-channel arrays reach the operation as C×H×W: flips stay exact, warps match the H×W×C layout's."""
    x = np.arange(2 * 5 * 6 * 6, dtype=np.uint8).reshape(2, 5, 6, 6)
    op = LoaderAugment(SampleAugment(AugmentParams(hflip=1, vflip=1, **FLIPS_ONLY)), 1, channels_first=True)
    assert np.array_equal(op(x, np.empty_like(x), np.arange(2)), x[:, :, ::-1, ::-1])
    rgb = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    chw = np.ascontiguousarray(rgb.numpy())
    op = LoaderAugment(SampleAugment(AugmentParams()), 2, channels_first=True)
    assert torch.equal(torch.from_numpy(op(chw, np.empty_like(chw), np.arange(4))),
                       _ffcv_side(AugmentParams(), rgb, 0, np.arange(4)))


@pytest.mark.parametrize("side", SIDES)
def test_loader_rotation_moves_a_marker_where_expected(side):
    n, size, seed, epoch = 12, 31, 7, 3
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    x[:, :, 15, 25] = 255  # a marker 10 px right of the centre pixel (15, 15)
    indices = np.arange(100, 100 + n)
    y = SIDES[side](AugmentParams(hflip=0, vflip=0, rotation=90, perspective=0), x, epoch, indices, seed)
    theta = (sample_uniforms(seed, epoch, indices)[:, 2] * 2 - 1) * math.pi / 2  # the drawn angles
    assert theta.min() < -0.5 and theta.max() > 0.5  # the batch really rotates both ways
    for k in range(n):
        # output pixel p samples the input at R(θ)·p about the centre, so the marker q lands at R(-θ)·q
        want_col, want_row = 15 + 10 * math.cos(theta[k]), 15 - 10 * math.sin(theta[k])
        row, col = divmod(int(y[k, 0].argmax()), size)
        assert abs(row - want_row) <= 1 and abs(col - want_col) <= 1, (k, row, col, want_row, want_col)
        assert y[k, 0].max() > 60 and torch.equal(y[k, 0], y[k, 2])


def _images(tiny_data, n: int) -> torch.Tensor:
    src = build_source(tiny_data / "val", image_size=32, batch_size=n, num_workers=0)
    return next(iter(src.epoch(0)))[0]


@pytest.mark.parametrize("side", SIDES)
def test_loader_warp_matches_the_device_warp_for_the_same_draw(tiny_data, side):
    """Same draws, same geometry, bilinear and black outside on both sides: equal up to rounding to uint8."""
    x = _images(tiny_data, 32)
    params, indices = AugmentParams(), np.arange(len(x))
    device = apply(x.float(), SampleAugment(params, seed=1).draw(2, indices))
    loader = SIDES[side](params, x, 2, indices, seed=1, **({"threads": 2} if side == "ffcv" else {}))
    diff = (loader.float() - device).abs()
    assert loader.dtype == torch.uint8 and diff.mean() < 0.5 and (diff > 1).float().mean() < 0.01, diff.max()


def test_loader_and_device_sides_are_statistically_alike():
    """Different random streams, same distributions: flip rates and the share of the image that a rotation +
    perspective keeps inside the frame (white images, black outside) agree."""
    n, params = 512, AugmentParams()
    loader = SampleAugment(params, seed=0).draw(0, np.arange(n))
    device = sample(n, params, torch.Generator().manual_seed(0))
    for a, b in ((loader.hflip, device.hflip), (loader.vflip, device.vflip)):
        assert abs(a.double().mean() - 0.5) < 0.07 and abs(b.double().mean() - 0.5) < 0.07
    white = torch.full((n, 3, 24, 24), 255, dtype=torch.uint8)
    kept_loader = _ffcv_side(params, white, 0, np.arange(n), threads=2).double().mean() / 255
    kept_device = apply(white.float(), device).double().mean() / 255
    assert 0.7 < kept_device < 0.98 and abs(kept_loader - kept_device) < 0.015, (kept_loader, kept_device)


@pytest.mark.parametrize("path", ["train.beton", "train"])
def test_loader_augmentation_in_real_loaders(tiny_data, path):
    """Through build_source: labels and order unchanged, about half the images flipped (as on the device side),
    draws a function of (seed, epoch, sample) only: the same batches again, with other worker counts, and
    unaugmented with augment=False."""
    params = AugmentParams(hflip=0.5, vflip=0, **FLIPS_ONLY)

    def epoch(workers: int, e: int, augment: bool = True):
        src = build_source(tiny_data / path, image_size=32, batch_size=64, num_workers=workers, train=True,
                           seed=3, augment=params)
        return src, [torch.cat(t) for t in zip(*src.epoch(e, augment))]

    src, (x, y) = epoch(1, 2)
    plain, yp = [torch.cat(t) for t in zip(*src.epoch(2, augment=False))]
    assert torch.equal(y, yp) and x.dtype == torch.uint8
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(x, plain)])
    kept = torch.tensor([torch.equal(a, b) for a, b in zip(x, plain)])
    assert bool((flipped | kept).all()) and 0.4 < flipped.double().mean() < 0.6
    device = apply(plain.float(), sample(len(plain), params, torch.Generator().manual_seed(0)))
    device_rate = torch.tensor([torch.equal(a, b.float().flip(-1)) for a, b in zip(device, plain)]).double().mean()
    assert abs(flipped.double().mean() - device_rate) < 0.1
    again, _ = [torch.cat(t) for t in zip(*src.epoch(2))]
    assert torch.equal(again, x)
    _, (other_workers, _) = epoch(2 if path.endswith(".beton") else 0, 2)
    assert torch.equal(other_workers, x)
    assert not torch.equal([torch.cat(t) for t in zip(*src.epoch(3))][0], x)


def test_where_is_validated():
    assert load_config(None, ["data.augment.where=loader"]).data.augment.where == "loader"
    assert load_config(None, []).data.augment.where == "auto"
    with pytest.raises(DynconvError, match="data.augment.where"):
        load_config(None, ["data.augment.where=gpu"])


@pytest.mark.slow
@pytest.mark.parametrize("split", ["beton", "folder"])
def test_train_cli_with_loader_side_augmentation(tiny_data, tmp_path, split):
    run_dir = tmp_path / "run"
    data = ([f"data.train={tiny_data / 'train'}", f"data.val={tiny_data / 'val'}"] if split == "folder" else [])
    assert run_cli(*train_args(tiny_data, run_dir, "data.augment.where=loader", "train.epochs=1",
                                "tracking.enabled=false", "eval.subsets=RGB,R", *data)) == 0
    assert (run_dir / "model.pt").is_file() and (run_dir / "eval.json").is_file()
    assert "where: loader" in (run_dir / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["auto", "device"])
def test_on_a_cpu_auto_augments_and_normalises_in_the_loader(tiny_data, tmp_path, capsys, monkeypatch, where):
    """On the CPU the FFCV pipelines also normalise (as FFCV's recipe), unless augmenting on the "device"."""
    from dynconv.launch import training_data

    normalized, build = [], training_data.build_source

    def spy(*args, **kwargs):
        source = build(*args, **kwargs)
        normalized.append(source.normalized)
        return source

    monkeypatch.setattr(training_data, "build_source", spy)
    assert run_cli(*train_args(tiny_data, tmp_path / "run", "train.epochs=1", "tracking.enabled=false",
                               "eval.subsets=RGB", "train.device=cpu", f"data.augment.where={where}")) == 0
    assert normalized == [where == "auto"] * 2  # the training and validation .beton files
    if where == "auto":
        assert "augmenting in the data loader (data.augment.where=auto on the CPU)" in capsys.readouterr().out
