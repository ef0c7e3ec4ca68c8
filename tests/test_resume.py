"""A run killed with SIGKILL after a mid-epoch checkpoint resumes to bitwise-identical final weights."""
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli
from test_cli import _train_args

COMMON = ["train.epochs=2", "train.every_steps=3", "train.keep_checkpoints=3", "tracking.enabled=false",
          "data.num_workers=0"]


def _args(tiny_data, run_dir, *extra):
    argv = [str(a) for a in _train_args(tiny_data, run_dir, *COMMON, *extra)]
    return [f"data.train={tiny_data / 'train'}" if a.startswith("data.train=") else a for a in argv
            if a != "data.num_workers=1"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    assert run_cli(*_args(tiny_data, reference)) == 0

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "launch.cli", *_args(tiny_data, killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "epoch_0002_step_000006.pt"  # 6 of the 10 steps of epoch 2 done
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (killed / "model.pt").exists()

    assert run_cli(*_args(tiny_data, killed, "train.resume=auto")) == 0
    a = torch.load(reference / "model.pt", weights_only=True)["model"]
    b = torch.load(killed / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_truncated_newest_checkpoint_is_skipped(tmp_path):
    from dynconv.train.checkpoint import epoch_checkpoint, latest_checkpoint

    for epoch, step in ((1, None), (2, 3)):
        path = epoch_checkpoint(tmp_path, epoch, step)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"dynconv": {"format_version": 1}, "epoch": epoch}, path)
    newest = epoch_checkpoint(tmp_path, 2, 3)
    assert latest_checkpoint(tmp_path) == newest
    newest.write_bytes(newest.read_bytes()[:50])
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        assert latest_checkpoint(tmp_path) == epoch_checkpoint(tmp_path, 1)


@pytest.mark.slow
def test_stop_request_checkpoints_at_a_step_and_resume_continues_the_same_mlflow_run(tiny_data, tmp_path):
    """What a Slurm pre-emption does in-process: stop at a step boundary, checkpoint, mark the MLflow run
    SCHEDULED; resuming finishes it in the same run, with per-epoch subset metrics for every epoch once."""
    from mlflow.tracking import MlflowClient

    from dynconv.train.loop import TrainingPreempted
    from launch.config import load_config
    from launch.training import run_training
    from launch.tracking import default_tracking_uri

    run_dir = tmp_path / "run"
    argv = _args(tiny_data, run_dir, "eval.every_epoch=true", "eval.subsets=RGB,G")
    argv = [a for a in argv if a != "tracking.enabled=false"]
    cfg = load_config(argv[2], argv[3:])
    polls = iter(range(10_000))
    with pytest.raises(TrainingPreempted) as info:
        run_training(cfg, log=lambda _: None, stop_requested=lambda: next(polls) >= 13)  # 10 steps/epoch
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert info.value.checkpoint == run_dir / "checkpoints" / "epoch_0002_step_000003.pt"
    client = MlflowClient(default_tracking_uri(run_dir))
    run_id = __import__("json").loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "SCHEDULED"

    result = run_training(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": "auto"})}),
                          log=lambda _: None)
    assert result["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    for key in ("train_loss", "val_acc_RGB", "val_acc_G", "val_worst_subset_acc"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    worst = client.get_metric_history(run_id, "val_worst_subset_acc")[-1].value
    accs = [client.get_metric_history(run_id, f"val_acc_{s}")[-1].value for s in ("RGB", "G")]
    assert worst == min(accs)
