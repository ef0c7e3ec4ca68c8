"""Data-parallel training (2 processes, gloo) through `dynconv train --nproc 2`."""
import json
import re
import subprocess
import sys

import pytest
import torch

from dynconv.data.loaders import ShardedBatchSampler
from test_cli import _train_args


def test_sharded_batches_union_equals_single_process_batches():
    def batches(rank, world, batch):
        gen = torch.Generator().manual_seed(7)
        return list(ShardedBatchSampler(50, batch, rank, world, gen, drop_last=True))

    single = batches(0, 1, 8)
    ranks = [batches(r, 2, 8) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 6
    for k, b in enumerate(single):
        assert ranks[0][k] + ranks[1][k] == b and len(ranks[0][k]) == 4
    with pytest.raises(Exception, match="divisible"):
        ShardedBatchSampler(50, 9, 0, 2, torch.Generator(), True)


def _losses(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"^epoch \d+/\d+  train_loss ([0-9.]+)", stdout, re.M)]


@pytest.mark.slow
def test_ddp_matches_single_process_and_only_rank0_writes(tiny_data, tmp_path):
    common = ["train.epochs=3", "train.batch_size=32", "data.augment.enabled=false", "data.num_workers=0"]
    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        argv = [str(a) for a in _train_args(tiny_data, tmp_path / name, *common)]
        argv = [f"data.train={tiny_data / 'train'}" if a.startswith("data.train=") else a for a in argv]
        argv = [a for a in argv if a != "data.num_workers=1"]
        cmd = [sys.executable, "-m", "launch.cli", argv[0], "--nproc", str(nproc), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = proc.stdout
    single, ddp = _losses(runs["single"]), _losses(runs["ddp"])
    assert len(single) == len(ddp) == 3, runs["ddp"]
    # the same global batches; only BatchNorm statistics differ (per process in DDP): close, not equal
    assert all(abs(a - b) < 0.15 for a, b in zip(single, ddp)), (single, ddp)
    assert "data-parallel over 2 processes (gloo)" in runs["ddp"]
    assert runs["ddp"].count("MLflow run id:") == 1  # one process reports and logs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run_id = json.loads((tmp_path / "ddp" / "mlflow_run.json").read_text())["run_id"]
    assert sorted(h.step for h in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3]
    ckpt = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # plain state_dict, loads for eval
