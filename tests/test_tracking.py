"""The MLflow adapter on a local sqlite store: the durable buffer also with MLflow's asynchronous logging,
the status a run ends with, and reading every run back page by page."""
from __future__ import annotations

import json

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


def test_a_run_ended_between_its_evaluation_and_its_mlflow_end_is_completed_on_resume(store, tiny_data, tmp_path,
                                                                                       monkeypatch, capsys):
    """The process ends (pre-empted, killed) after ``eval.json`` is written but before the MLflow run has the
    final evaluation: a resume finds nothing to train, and logs the rest of the run from run.dir instead of
    leaving the run without its per-subset results."""
    from mlflow.tracking import MlflowClient

    from dynconv.launch import tracking
    from helpers import run_cli, train_args

    run_dir = tmp_path / "run"
    argv = train_args(tiny_data, run_dir, "train.epochs=2", f"tracking.uri={store}", "eval.subsets=RGB,R",
                      "data.num_workers=0", "train.resume=auto")
    real = tracking.log_final

    def killed(*args, **kwargs):
        raise SystemExit(143)  # as a process ended by a signal right after writing eval.json

    monkeypatch.setattr(tracking, "log_final", killed)
    with pytest.raises(SystemExit):
        run_cli(*argv)
    assert (run_dir / "eval.json").exists() and (run_dir / "model.pt").exists()
    info = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(store)
    assert "subset/RGB/acc" not in client.get_run(info["run_id"]).data.metrics

    monkeypatch.setattr(tracking, "log_final", real)
    assert run_cli(*argv) == 0
    assert "lacks the final evaluation" in "".join(capsys.readouterr())
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED" and {"subset/RGB/acc", "subset/R/acc"} <= set(run.data.metrics)
    assert {"eval.json", "eval.md", "config.yaml"} <= {a.path for a in client.list_artifacts(info["run_id"])}
    assert [m.step for m in client.get_metric_history(info["run_id"], "curves/train_loss")] == [1, 2]
    assert run_cli(*argv) == 0  # a complete run is left as it is
    assert "lacks the final evaluation" not in "".join(capsys.readouterr())
    assert len(client.get_metric_history(info["run_id"], "subset/RGB/acc")) == 1


def test_a_run_waits_for_a_tracking_server_that_does_not_answer_yet(tmp_path, monkeypatch, caplog):
    """A run that starts while its tracking server restarts retries for ``tracking.wait_s`` (a sweep's next
    trial, a job of an array) instead of failing; a store that refuses for another reason fails at once."""
    import logging
    import time

    from dynconv.errors import DynconvError
    from dynconv.launch import tracking

    calls = []
    real_open = tracking.MlflowRun._open

    def restarting(self, *args):
        calls.append(time.monotonic())
        if len(calls) < 3:
            error = DynconvError("cannot open MLflow store 'http://127.0.0.1:9': Max retries exceeded")
            error.unreachable = True
            raise error
        return real_open(self, *args)

    monkeypatch.setattr(tracking.MlflowRun, "_open", restarting)
    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    with caplog.at_level(logging.WARNING, "dynconv"):
        run = tracking.MlflowRun(f"sqlite:///{tmp_path / 'm.db'}", "exp", tmp_path / "run", wait_s=60)
    assert len(calls) == 3 and run.run_id
    assert sum("does not answer: retrying for up to 60 s" in r.message for r in caplog.records) == 1
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run.client = MlflowClient("http://127.0.0.1:9")  # the store goes away later: still one buffering warning
    with pytest.warns(UserWarning, match="unreachable"):
        run.log_metrics({"loss": 1.0}, step=1)

    calls.clear()
    with pytest.raises(DynconvError, match="Max retries"):  # wait_s=0: at once
        tracking.MlflowRun(f"sqlite:///{tmp_path / 'm.db'}", "exp", tmp_path / "run2")
    assert len(calls) == 1

    def refused(self, *args):
        calls.append(1)
        raise DynconvError("cannot open MLflow store 'http://h': 403 Forbidden")

    calls.clear()
    monkeypatch.setattr(tracking.MlflowRun, "_open", refused)
    with pytest.raises(DynconvError, match="403"):
        tracking.MlflowRun("http://h", "exp", tmp_path / "run3", wait_s=60)
    assert calls == [1]


def test_a_dead_server_is_told_apart_from_a_refusal():
    from dynconv.launch.mlflow_store import is_unreachable, store_errors

    from dynconv.errors import DynconvError

    for cause, unreachable in ((ConnectionRefusedError(111, "Connection refused"), True),
                               (RuntimeError("API request to http://x failed: Max retries exceeded with url"), True),
                               (RuntimeError("RESOURCE_DOES_NOT_EXIST: experiment 7"), False)):
        with pytest.raises(DynconvError) as e:
            with store_errors("http://x"):
                raise cause
        assert is_unreachable(e.value) is unreachable


@pytest.mark.slow  # two 1-epoch trainings and three evaluations: about a minute
def test_the_researchers_record_commit_logged_model_table(tiny_data, tmp_path, monkeypatch, capsys):
    """Launched from a git checkout with an uncommitted change: the run records that checkout's commit and
    dirty flag (and dynconv's version) as tags and in run.dir/source.json; the model is an MLflow 3 logged model
    with the final per-subset metrics linked to it, registered, found by search_logged_models and loadable from
    its models:/ URI; the per-subset table is a table artifact."""
    import subprocess

    import mlflow
    import numpy as np
    from mlflow.tracking import MlflowClient

    from helpers import CONFIG, run_cli, train_args

    repo = tmp_path / "experiments"
    repo.mkdir()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "exp.yaml").write_text(open(CONFIG).read())
    subprocess.run([*git, "add", "exp.yaml"], check=True)
    subprocess.run([*git, "commit", "-qm", "config"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    (repo / "exp.yaml").write_text(open(CONFIG).read() + "# an uncommitted change\n")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("DYNCONV_LAUNCH_DIR", raising=False)
    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_dir = tmp_path / "run"
    argv = train_args(tiny_data, run_dir, "train.epochs=1", f"tracking.uri={store}", "eval.subsets=RGB,R",
                      "data.num_workers=0", "tracking.register_as=dyn", "tracking.experiment=record")
    argv[argv.index("--config") + 1] = "exp.yaml"
    assert run_cli(*argv) == 0
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(store)
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == commit and tags["dynconv.git.dirty"] == "true"
    assert tags["dynconv.launch_dir"] == str(repo) and tags["dynconv.version"] == __import__("dynconv").__version__
    assert json.loads((run_dir / "source.json").read_text())["mlflow.source.git.commit"] == commit

    models = client.search_logged_models([run.info.experiment_id])
    assert len(models) == 1
    model = models[0]
    assert model.source_run_id == run_id and model.status.to_int() == 2  # READY
    linked = {m.key: m.value for m in model.metrics}
    assert linked["subset/RGB/acc"] == pytest.approx(run.data.metrics["subset/RGB/acc"])
    assert {"subset/R/acc", "subset/worst_subset_acc"} <= set(linked)
    assert model.tags["mlflow.source.git.commit"] == commit
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    version = client.get_model_version("dyn", "1")
    assert version.run_id == run_id and version.source == model.artifact_location

    mlflow.set_tracking_uri(store)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    finally:
        mlflow.set_tracking_uri(None)
    assert pyfunc.predict(np.zeros((2, 3, 32, 32), np.float32), params={"subset": "R"}).shape == (2, 4)
    for uri in (f"models:/{model.model_id}", "models:/dyn/1", f"runs:/{run_id}/model"):
        out = tmp_path / "eval.json"
        assert run_cli("eval", uri, "--tracking-uri", store, "--data", tiny_data / "val", "--subsets", "RGB",
                       "--json", out) == 0
        assert json.loads(out.read_text())["subsets"]["RGB"]["accuracy"] == pytest.approx(linked["subset/RGB/acc"])

    logged = json.loads(tags["mlflow.loggedArtifacts"])
    assert {"path": "eval_table.json", "type": "table"} in logged
    table = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval_table.json",
                                                                 tracking_uri=store)).read())
    assert table["columns"][:2] == ["subset", "accuracy %"]
    assert [row[0] for row in table["data"]] == ["RGB", "R"]
    assert table["data"][0][1] == pytest.approx(100 * linked["subset/RGB/acc"], abs=0.005)
    _reproduce_from_the_record(run_dir, run_id, store, repo, git, commit, tmp_path, capsys)


def test_the_epoch_line_and_the_subset_table_fit_100_columns():
    """One short line an epoch, named as in MLflow (time/epoch_s, time/data_wait_s); the per-subset table wraps
    its cells at 100 columns, also for 5 channels' 31 subsets."""
    from dynconv.channels import all_subsets
    from dynconv.train.loop import epoch_line, subset_table_lines

    metrics = {"train_loss": 0.8123, "train_acc": 0.71, "data_wait_s": 0.31, "image_passes": 3000.0,
               "train_macs": 4.4e11, "lr": 0.01, "calibration_time_s": 3.2, "calibration_images": 128.0,
               "val_acc": 1.0, "val_mean_subset_acc": 0.9, "val_worst_subset_acc": 0.689, "epoch_time_s": 135.4,
               **{f"val_acc_{s}": 0.9 for s in ("RGB", "RG", "RB", "GB", "R", "G", "B")}}
    assert epoch_line(12, 12, {**metrics, "val_acc": 0.993, "epoch_time_s": 35.4}) == (
        "epoch 12/12  train_loss=0.812 val_acc=99.3% mean=90.0% worst=68.9%  epoch_s=35.4 data_wait_s=0.31")
    assert len(epoch_line(100, 100, {**metrics, "epoch_time_s": 1234.5, "data_wait_s": 123.45})) <= 100
    assert epoch_line(1, 2, {"train_loss": 1.0, "train_acc": 0.5, "epoch_time_s": 2.0}) == \
        "epoch 1/2  train_loss=1.000 train_acc=50.0%  epoch_s=2.00"
    subsets = all_subsets(5)
    rows = subset_table_lines({f"val_acc_{n}": 0.5 for n in __import__("itertools").chain.from_iterable(
        [[ "".join("ABCDE"[i] for i in s)] for s in subsets])}, "ABCDE", subsets)
    assert all(len(r) <= 100 for r in rows) and sum(r.count("%") for r in rows) == 31
    assert rows[0].split()[:2] == ["ABCDE", "50.0%"]


def _reproduce_from_the_record(run_dir, run_id, store, repo, git, commit, tmp_path, capsys):
    """`dynconv reproduce` of the run above: the commit and command it needs, what differs here; --run trains
    the same model again (same accuracies), tagged as reproducing it."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from helpers import run_cli

    capsys.readouterr()
    assert run_cli("reproduce", run_dir) == 0
    out = capsys.readouterr().out
    assert f"git checkout {commit}" in out and f"cd {repo}" in out
    assert f"dynconv train --config {run_dir / 'config.yaml'} run.dir={run_dir}-reproduced" in out
    assert "uncommitted changes" in out and "this checkout is at" not in out
    subprocess.run([*git, "commit", "-qam", "later"], check=True)
    assert run_cli("reproduce", run_id, "--tracking-uri", store, "--out", tmp_path / "again", "--run") == 0
    out = capsys.readouterr().out
    assert f"the run at {commit[:12]}: git checkout {commit[:12]}" in out
    client = MlflowClient(store)
    again = client.get_run(json.loads((tmp_path / "again" / "mlflow_run.json").read_text())["run_id"])
    assert again.data.tags["reproduces"] == run_id
    before = client.get_run(run_id).data.metrics
    assert {k: again.data.metrics[k] for k in ("subset/RGB/acc", "subset/R/acc")} == \
        {k: before[k] for k in ("subset/RGB/acc", "subset/R/acc")}
    assert run_cli("reproduce", tmp_path / "nothing-here", "--tracking-uri", store) == 2
    assert "nothing-here is not a run folder" in capsys.readouterr().err
    assert run_cli("reproduce", "0123abcd", "--tracking-uri", store) == 2
    assert "no MLflow run '0123abcd'" in capsys.readouterr().err
