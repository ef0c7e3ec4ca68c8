"""bench/gpu_recipe.py: its repeated ``.beton`` (each distinct JPEG stored once) reads back as the samples repeated,
and a CPU rehearsal shows where it is as it goes and what its watchdog reports of a stall."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT

SCRIPT = ROOT / "bench" / "gpu_recipe.py"


def _script():
    """The script as a module (registered: its data writer's worker processes find their function by name)."""
    if "gpu_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_recipe", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_recipe"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_recipe"]


def _stored_bytes(reader, i: int) -> bytes:
    mem = np.memmap(reader.file_name, "uint8", mode="r")
    ptr = int(reader.metadata[i]["f0"]["data_ptr"])
    size = int(reader.alloc_table["size"][reader.alloc_table["ptr"] == ptr][0])
    return mem[ptr:ptr + size].tobytes()


@pytest.mark.parametrize("os_cache", [True, False])
def test_a_repeated_beton_holds_each_jpeg_once_and_reads_as_the_samples_repeated(tmp_path, os_cache):
    from ffcv.reader import Reader

    from dynconv.data import build_source, scan_image_folder
    from dynconv.data.ffcv_io import read_beton_meta, write_beton
    from dynconv.data.synth import write_dataset

    g = _script()
    root = write_dataset(tmp_path / "d", num_classes=3, train_per_class=2, val_per_class=1, size=24)
    src = write_beton(scan_image_folder(root / "train"), tmp_path / "u.beton", max_side=24, num_workers=2)
    n = 20  # 6 distinct: 3 full repeats and 2 more
    dst = g.repeat_beton(src, tmp_path / "r.beton", n)
    a, b = Reader(str(src)), Reader(str(dst))
    assert b.num_samples == n and read_beton_meta(dst)["num_samples"] == n
    assert read_beton_meta(dst)["classes"] == read_beton_meta(src)["classes"]
    assert sorted(b.alloc_table["sample_id"].tolist()) == list(range(n))  # FFCV's page cache finds every sample
    assert len(set(b.metadata["f0"]["data_ptr"].tolist())) == 6  # one stored copy per distinct image
    assert dst.stat().st_size < src.stat().st_size + 4096  # the data region is not repeated
    for i in range(n):
        assert b.metadata[i]["f1"] == a.metadata[i % 6]["f1"]  # the label
        assert _stored_bytes(b, i) == _stored_bytes(a, i % 6)
    # FFCV's loader (memory-mapped, or its own page cache) decodes the repeats as the originals
    kw = dict(image_size=24, batch_size=6, num_workers=1, os_cache=os_cache)
    first = [(x, y) for x, y in build_source(src, **kw).epoch(0)]
    repeated = [(x, y) for x, y in build_source(dst, **kw).epoch(0)]
    assert len(repeated) == 4 and all(len(y) == 6 for _, y in repeated[:3]) and len(repeated[3][1]) == 2
    for x, y in repeated[:3]:
        assert np.array_equal(x.numpy(), first[0][0].numpy()) and np.array_equal(y.numpy(), first[0][1].numpy())


@pytest.mark.slow
def test_a_cpu_rehearsal_prints_its_stages_and_epochs_as_they_end_and_the_watchdog_reports_a_stall(tmp_path):
    """Tiny settings on the CPU with a 6 s stall in each run's second step and a 2 s watchdog (~35 s on 2 cores):
    the stages and every run's epoch lines come before the table, and stderr holds the stall's report with the
    sleeping frame, in the bare loop's step and in dynconv's hook."""
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--images", "64", "--unique", "8", "--val-images", "32",
         "--side", "48", "--batch", "16", "--res-start", "32", "--res-end", "32", "--epochs", "1", "--workers", "1",
         "--compile", "off", "--precision", "fp32", "--profile-steps", "2", "--data-cache", str(tmp_path / "cache"),
         "--stall-seconds", "2", "--fake-stall-after", "2", "--fake-stall-seconds", "6"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    order = ["-- writing data", "made the distinct images", "-- bare FFCV + PyTorch, compile off",
             "bare FFCV + PyTorch, compile off: epoch 1/1", "-- profiling 2 steps", "-- dynconv train, compile off",
             "epoch 1/1  train_loss=",  # dynconv's own epoch line
             "dynconv train, compile off: epoch 1/1", "| run |"]
    at = [out.find(s) for s in order]
    assert -1 not in at and at == sorted(at), (order, at, out)
    reports = r.stderr.split("watchdog: no progress for")[1:]
    stalled = [rep for rep in reports if "in _fake_stall" in rep]
    assert any("stage 'bare FFCV + PyTorch, compile off'" in rep and "in train_step" in rep for rep in stalled), r.stderr
    assert any("stage 'dynconv train, compile off'" in rep and "in should_stop" in rep for rep in stalled), r.stderr
    assert all("(still waiting)" in rep and "most recent call first" in rep for rep in reports)
