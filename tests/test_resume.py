"""Resuming: a truncated newest checkpoint is skipped; a stop request checkpoints at a step and the resumed run
continues the same MLflow run. (SIGKILL at ten points, then a bitwise-identical resume: test_reliability.py.)"""
import pytest
import torch

from dynconv.train import TrainingPreempted
from helpers import resume_args, stop_after


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



def test_an_epoch_whose_metrics_never_reached_mlflow_is_logged_once_on_resume(tiny_data, tmp_path, monkeypatch):
    """A job killed between an epoch's checkpoint and its metrics (a node that died) resumes after that epoch:
    the metrics come from the checkpoint, so the run's history has no gap, and a resume after an epoch that
    was logged adds nothing twice."""
    from mlflow.tracking import MlflowClient

    from dynconv.launch import tracking
    from dynconv.launch.config import load_config
    from dynconv.launch.training import run_training

    run_dir = tmp_path / "run"
    argv = [a for a in resume_args(tiny_data, run_dir, "train.epochs=1") if a != "tracking.enabled=false"]
    cfg = load_config(argv[2], argv[3:])

    def killed(self, epoch, metrics, checkpoint):
        raise KeyboardInterrupt  # the process ends here: epoch 1's checkpoint is written, its metrics are not

    with monkeypatch.context() as m:
        m.setattr(tracking.MlflowTracking, "on_epoch_end", killed)
        with pytest.raises(KeyboardInterrupt):
            run_training(cfg)
    saved = torch.load(run_dir / "checkpoints" / "epoch_0001.pt", weights_only=False)["epoch_metrics"]
    client = MlflowClient(tracking.default_tracking_uri(run_dir))
    run_id = __import__("json").loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_metric_history(run_id, "curves/train_loss") == []

    def resume(epochs: int) -> None:
        train = cfg.train.model_copy(update={"resume": "auto", "epochs": epochs})
        assert run_training(cfg.model_copy(update={"train": train}))["run_id"] == run_id

    resume(2)
    history = client.get_metric_history(run_id, "curves/train_loss")
    assert [h.step for h in history] == [1, 2] and history[0].value == pytest.approx(saved["train_loss"])
    resume(3)  # from epoch 2's checkpoint, whose metrics the run has
    assert [h.step for h in client.get_metric_history(run_id, "curves/train_loss")] == [1, 2, 3]


@pytest.mark.slow
def test_stop_request_checkpoints_at_a_step_and_resume_continues_the_same_mlflow_run(tiny_data, tmp_path):
    """What a Slurm pre-emption does in-process: stop at a step boundary, checkpoint, mark the MLflow run
    SCHEDULED; resuming finishes it in the same run, with per-epoch subset metrics for every epoch once."""
    from mlflow.tracking import MlflowClient

    from dynconv.launch.config import load_config
    from dynconv.launch.training import run_training
    from dynconv.launch.tracking import default_tracking_uri

    run_dir = tmp_path / "run"
    argv = resume_args(tiny_data, run_dir, "eval.every_epoch=true", "eval.subsets=RGB,G")
    argv = [a for a in argv if a != "tracking.enabled=false"]
    cfg = load_config(argv[2], argv[3:])
    with pytest.raises(TrainingPreempted) as info:
        run_training(cfg, hooks=[stop_after(iter(range(10_000)), 13)])  # 10 steps/epoch
    assert (info.value.epoch, info.value.step) == (2, 3)
    assert info.value.checkpoint == run_dir / "checkpoints" / "epoch_0002_step_000003.pt"
    client = MlflowClient(default_tracking_uri(run_dir))
    run_id = __import__("json").loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert client.get_run(run_id).info.status == "SCHEDULED"

    result = run_training(cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": "auto"})}))
    assert result["run_id"] == run_id and client.get_run(run_id).info.status == "FINISHED"
    for key in ("train_loss", "val_acc_RGB", "val_acc_G", "val_worst_subset_acc"):
        assert [m.step for m in client.get_metric_history(run_id, f"curves/{key}")] == [1, 2], key
    waits, epochs = (client.get_metric_history(run_id, f"time/{k}") for k in ("data_wait_s", "epoch_s"))
    assert [m.step for m in waits] == [1, 2] and all(0 < w.value < e.value for w, e in zip(waits, epochs))
    worst = client.get_metric_history(run_id, "curves/val_worst_subset_acc")[-1].value
    accs = [client.get_metric_history(run_id, f"curves/val_acc_{s}")[-1].value for s in ("RGB", "G")]
    assert worst == min(accs)


@pytest.mark.slow
def test_weight_ema_is_checkpointed_resumed_bitwise_and_shipped(tiny_data, tmp_path):
    """train.ema_decay: the average is part of every checkpoint, so a run stopped mid-epoch and resumed ships
    bitwise the same averaged model.pt as an uninterrupted run; validation scores the average (the model
    that ships) and reports the live weights beside it."""
    from dynconv.launch.config import load_config
    from dynconv.launch.training import run_training

    def cfg(run_dir, *extra):
        argv = resume_args(tiny_data, run_dir, "train.ema_decay=0.9", "tracking.enabled=false", *extra)
        return load_config(argv[2], argv[3:])

    reference = run_training(cfg(tmp_path / "ref"))
    with pytest.raises(TrainingPreempted):
        run_training(cfg(tmp_path / "stopped"), hooks=[stop_after(iter(range(10_000)), 13)])
    resumed = run_training(cfg(tmp_path / "stopped", "train.resume=auto"))
    a = torch.load(reference["checkpoint"], weights_only=True)["model"]
    b = torch.load(resumed["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = torch.load(sorted((tmp_path / "ref" / "checkpoints").glob("epoch_0002.pt"))[0], weights_only=True)
    assert all(torch.equal(a[k], last["ema"]["model"][k]) for k in a)  # model.pt is the average
    assert not all(torch.equal(a[k], last["model"][k]) for k in a)    # ... not the live weights
