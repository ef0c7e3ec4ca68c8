"""The MLflow adapter on a local sqlite store: the durable buffer also with MLflow's asynchronous logging,
the status a run ends with, and reading every run back page by page."""
from __future__ import annotations

import pytest

from dynconv.launch.compare import search_all_runs
from dynconv.launch.tracking import MlflowRun, exit_status
from dynconv.train import StoppedEarly, TrainingPreempted


@pytest.fixture
def store(tmp_path):
    return f"sqlite:///{tmp_path / 'mlruns.db'}"


def test_an_unreachable_store_buffers_also_with_async_logging(store, tmp_path, monkeypatch):
    """With MLFLOW_ENABLE_ASYNC_LOGGING=true (which sweeps forward) MLflow's log_batch no longer raises for a
    store that is down; records must still reach the buffer and then the store, in order."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = MlflowRun(store, "exp", tmp_path / "run", "r")
    good = run.client
    run.client = MlflowClient("http://127.0.0.1:9")  # nothing listens there
    with pytest.warns(UserWarning, match="unreachable"):
        run.log_metrics({"train_loss": 1.0}, step=1)
    run.log_metrics({"train_loss": 0.5}, step=2)
    assert [r["step"] for r in run.pending()] == [1, 2]
    run.client = good
    run.log_metrics({"train_loss": 0.25}, step=3)  # delivers the buffer first
    assert run.pending() == []
    assert [(m.step, m.value) for m in good.get_metric_history(run.run_id, "train_loss")] == [(1, 1.0), (2, 0.5),
                                                                                               (3, 0.25)]


def test_exit_status_of_a_run():
    assert exit_status(TrainingPreempted(1, 2, None)) == "SCHEDULED"
    assert exit_status(StoppedEarly("asha")) == "FINISHED"
    assert exit_status(RuntimeError()) == "FAILED"
    assert exit_status(KeyboardInterrupt()) == "KILLED"


def test_compare_reads_every_page(store):
    """``dynconv compare`` read one page (5,000 runs) and dropped the rest; it pages now."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.create_experiment("many")
    made = {client.create_run(exp).info.run_id for _ in range(7)}
    assert {r.info.run_id for r in search_all_runs(client, [exp], page_size=3)} == made


def test_eval_of_a_registered_model_without_a_store_says_which_and_creates_none(tmp_path, monkeypatch, capsys):
    """MLflow's default store is ./mlflow.db: resolving models:/ there would create an empty database and fail
    with a lookup error; dynconv asks for the store instead."""
    from helpers import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri in ("models:/dyn/1", "runs:/0123/model"):
        assert run_cli("eval", uri, "--data", tmp_path) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"dynconv: error: {uri} lives in an MLflow store: pass --tracking-uri (e.g. "
                       "http://127.0.0.1:5000 or sqlite:///runs/mlruns.db) or set MLFLOW_TRACKING_URI"], err
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_experiment_another_process_creates_meanwhile_joins_it(store, tmp_path, monkeypatch):
    """Trainings started together (an array, a sweep, a script) race to create their experiment: the loser's
    create fails with 'already exists', and it joins the experiment the winner made."""
    from mlflow.tracking import MlflowClient

    other = MlflowClient(store)
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def racing(self, name):
        calls.append(name)
        if len(calls) == 1:  # after this process looked and found nothing, another one creates it
            other.create_experiment(name)
            return None
        return lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", racing)
    run = MlflowRun(store, "shared", tmp_path / "run")
    assert run.client.get_run(run.run_id).info.experiment_id == lookup(other, "shared").experiment_id
