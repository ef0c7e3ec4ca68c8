"""Data-parallel training (2 processes, gloo) through `dynconv train --nproc 2`."""
import json
import subprocess
import sys

import pytest
import torch

from dynconv.data.loaders import ShardedBatchSampler
from helpers import epoch_losses, train_args


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



@pytest.mark.slow
def test_ddp_matches_single_process_and_only_rank0_writes(tiny_data, tmp_path):
    # GroupNorm: no batch statistics, so 2 processes x 16 images compute what 1 process x 32 does, up to the
    # order of floating-point sums (with BatchNorm the per-process statistics differ: close, not equal).
    # Clipped, as GroupNorm should be: unclipped, its first steps blow the loss up to ~6 and the rounding
    # differences grow chaotically (epoch losses 1.924 vs 1.86)
    common = ["train.epochs=3", "train.batch_size=32", "data.augment.enabled=false", "data.num_workers=0",
              "model.norm=group", "train.grad_clip=1.0"]
    runs = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        argv = [str(a) for a in train_args(tiny_data, tmp_path / name, *common)]
        argv = [f"data.train={tiny_data / 'train'}" if a.startswith("data.train=") else a for a in argv]
        argv = [a for a in argv if a != "data.num_workers=1"]
        cmd = [sys.executable, "-m", "dynconv.launch", argv[0], "--nproc", str(nproc), *argv[1:]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = proc.stdout
    single, ddp = epoch_losses(runs["single"]), epoch_losses(runs["ddp"])
    assert len(single) == len(ddp) == 3, runs["ddp"]
    # the same global batches and channel subsets, the same updates
    assert all(abs(a - b) < 0.02 for a, b in zip(single, ddp)), (single, ddp)
    assert "data-parallel over 2 processes (gloo)" in runs["ddp"]
    assert runs["ddp"].count("MLflow run id:") == 1  # one process reports and logs
    assert [ln.split()[1] for ln in runs["ddp"].splitlines() if ln.startswith("epoch ")] == ["1/3", "2/3", "3/3"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    run_id = json.loads((tmp_path / "ddp" / "mlflow_run.json").read_text())["run_id"]
    assert sorted(h.step for h in client.get_metric_history(run_id, "curves/train_loss")) == [1, 2, 3]
    ckpt = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])  # plain state_dict, loads for eval
