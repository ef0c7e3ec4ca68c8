"""Against a real `mlflow server` on loopback: logging, compare, study report, and a server that dies mid-run."""
import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from helpers import run_cli, train_args
from mlflow_server_helpers import Server


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(module_tmp):
    srv = Server(module_tmp("mlflow-server"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def logged(server, tiny_data, module_tmp):
    """Three runs logged through the server, tagged with study roles."""
    root = module_tmp("srv-runs")
    runs = {"dyn0": ("dynamic_resnet18", "dynamic", "slice"), "dyn1": ("dynamic_resnet18", "dynamic", "slice"),
            "plain": ("resnet18", "plain", None)}
    for i, (name, (model, role, mode)) in enumerate(runs.items()):
        extra = [f"model.name={model}", f"run.tags.study={role}", f"run.name={name}", f"train.seed={i}",
                 "train.epochs=2", f"tracking.uri={server.url}", "tracking.experiment=srv"]
        extra += [f"model.stem_mode={mode}"] if mode else ["dropout.kind=none", "model.stem_mode=null"]
        extra += ["tracking.register_as=dyn"] if name == "dyn0" else []
        assert run_cli(*train_args(tiny_data, root / name, *extra)) == 0
    return root


def test_runs_logged_through_server_compare_in_every_format(server, logged, capsys):
    capsys.readouterr()
    assert run_cli("compare", "--tracking-uri", server.url, "--format", "json", "--sort", "mean_subset_acc") == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["run"] for r in rows) == ["dyn0", "dyn1", "plain"]
    means = [r["mean_subset_acc"] for r in rows]
    assert means == sorted(means, reverse=True)
    for fmt, marker in (("csv", "run_id,run,model"), ("markdown", "| run | model |")):
        assert run_cli("compare", "--tracking-uri", server.url, "--format", fmt) == 0
        out = capsys.readouterr().out
        assert marker in out and all(n in out for n in ("dyn0", "dyn1", "plain"))
    assert run_cli("compare", "--tracking-uri", server.url, "--format", "json", "--reference", "plain") == 0
    gaps = {r["run"]: r["rgb_gap"] for r in json.loads(capsys.readouterr().out)}
    plain = next(r for r in rows if r["run"] == "plain")["acc"]["RGB"]
    assert gaps["plain"] == 0 and gaps["dyn0"] == pytest.approx(plain - next(r for r in rows if r["run"] == "dyn0")["acc"]["RGB"])
    from dynconv.launch.compare import collect_rows, plot_rows

    collected, client = collect_rows(server.url, ["srv"])
    png = plot_rows(collected, client, server.root / "cmp.png")
    assert png["series"] == {"bars": 3, "scatter": 3, "curves": 3} and png["path"].stat().st_size > 10_000
    # artifacts went through the server's proxy into its artifact folder
    assert list((server.root / "artifacts").rglob("eval.json"))


def _rest(server, endpoint: str, **query) -> dict:
    url = f"{server.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_what_the_mlflow_ui_shows_through_its_rest_api(server, logged, tiny_data, tmp_path, capsys):
    """The experiment opens as model training (not GenAI), runs carry the standard context tags and the data
    sets as inputs, params are the set ones, metrics group by prefix, and the model is a registrable MLflow
    model that 'dynconv eval' accepts by URI."""
    exp = _rest(server, "experiments/get-by-name", experiment_name="srv")["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    req = urllib.request.Request(f"{server.url}/api/2.0/mlflow/runs/search", method="POST",
                                 data=json.dumps({"experiment_ids": [exp["experiment_id"]]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        run = next(x for x in json.loads(r.read())["runs"] if x["info"]["run_name"] == "dyn0")
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert {"mlflow.user", "mlflow.source.name", "dynconv.command"} <= set(tags)
    assert tags["dynconv.host"] == __import__("socket").gethostname()
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["run.name"] == "dyn0" and "None" not in params.values() and "model.switchable_stages" not in params
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"curves/train_loss", "curves/val_acc", "subset/RGB/acc", "subset/worst_subset_acc"} <= metrics
    assert not [m for m in metrics if "/" not in m]  # every chart in a group
    inputs = run["inputs"]["dataset_inputs"]
    assert {i["dataset"]["name"] for i in inputs} == {"train.beton", "val.beton"}
    assert json.loads(inputs[0]["dataset"]["schema"])["channels"] == ["R", "G", "B"]
    run_id = run["info"]["run_id"]
    top = {f["path"] for f in _rest(server, "artifacts/list", run_id=run_id)["files"]}
    assert {"eval.json", "eval.md", "eval.png", "config.yaml", "checkpoints", "eval_table.json"} <= top

    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    [model] = [m for m in client.search_logged_models([exp["experiment_id"]]) if m.source_run_id == run_id]
    assert "MLmodel" in {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert {m.key for m in model.metrics} >= {"subset/RGB/acc", "subset/mean_subset_acc"}
    assert client.get_model_version("dyn", "1").run_id == run_id  # tracking.register_as=dyn
    capsys.readouterr()
    for uri in (f"runs:/{run_id}/model", "models:/dyn/1", f"models:/{model.model_id}"):
        out = tmp_path / f"{uri.split(':')[0]}.json"
        assert run_cli("eval", uri, "--tracking-uri", server.url, "--data", tiny_data / "val", "--subsets", "RGB,R",
                       "--json", out) == 0
        report = json.loads(out.read_text())
        assert report["checkpoint"] == uri and report["subsets"]["RGB"]["accuracy"] == pytest.approx(
            client.get_run(run_id).data.metrics["subset/RGB/acc"])
    import mlflow.pyfunc
    import numpy as np

    mlflow.set_tracking_uri(server.url)
    model = mlflow.pyfunc.load_model("models:/dyn/1")
    logits = model.predict(np.zeros((2, 3, 32, 32), np.float32), params={"subset": "RG"})
    assert logits.shape == (2, 4)


def test_study_report_from_tagged_runs(server, logged, tmp_path, capsys):
    out = tmp_path / "study.md"
    capsys.readouterr()
    assert run_cli("report", "--study", "--tracking-uri", server.url, "--out", out) == 0
    text = out.read_text()
    assert "## Table 1" in text and "| | RGB | RG | RB | GB | R | G | B |" in text
    assert "| | Resnet-18(DynamicConv2D) | Resnet-18 |" in text
    assert "| runs (seeds) | 2 | 1 |" in text and " ± " in text
    assert "_no runs tagged study=ran, study=resnet34_" in text


def test_server_killed_mid_run_buffers_then_sync_replays(server, tiny_data, tmp_path):
    run_dir = tmp_path / "flaky"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dynconv.launch", *map(str, train_args(
        tiny_data, run_dir, "train.epochs=5", f"tracking.uri={server.url}", "tracking.experiment=flaky"))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("epoch 1/5"):
            server.stop()  # the tracking server dies after the first epoch
    assert proc.wait(timeout=600) == 0, "".join(output)
    text = "".join(output)
    assert "unreachable" in text and "dynconv sync" in text
    assert (run_dir / "model.pt").exists() and (run_dir / "eval.json").exists()
    buffered = [json.loads(x) for x in (run_dir / "tracking_buffer.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in buffered if r["op"] == "metrics" and "curves/train_loss" in r["metrics"]]
    assert steps[0] <= 2 and steps == list(range(steps[0], 6))  # every epoch after the kill, in order
    assert buffered[-1] == {"op": "terminate", "status": "FINISHED"}

    server.start()  # back, same database
    assert run_cli("sync", run_dir) == 0
    assert not (run_dir / "tracking_buffer.jsonl").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert sorted(h.step for h in client.get_metric_history(run_id, "curves/train_loss")) == [1, 2, 3, 4, 5]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "subset/G/acc" in run.data.metrics
    assert {"eval.json", "config.yaml"} <= {a.path for a in client.list_artifacts(run_id)}



def test_eight_concurrent_runs_through_a_server_that_is_killed_and_restarted_lose_and_duplicate_nothing(
        server, tmp_path):
    """8 runs log per-step and per-epoch metrics to one `mlflow server` at once (a thread each, through the
    trainer's own MlflowRun); the server is killed (SIGKILL) and restarted on the same database while they log.
    Each run's buffer takes what the dead server could not and replays it when the server is back: every
    history read back is complete and without duplicates, one run per logger."""
    import threading
    import warnings

    from mlflow.tracking import MlflowClient

    from dynconv.launch.tracking import MlflowRun

    runs, epochs, steps = 8, 20, 10
    go, buffered, errors = threading.Event(), set(), []

    def logger(i: int) -> None:
        try:
            run = MlflowRun(server.url, "load", tmp_path / f"run{i}", f"run{i}")
            go.wait()
            for epoch in range(1, epochs + 1):
                for step in range(steps):  # per-step points, then the epoch's, as a training's progress would
                    run.log_metrics({"step/loss": 1.0 / (1 + epoch * steps + step)}, step=(epoch - 1) * steps + step)
                    if run.pending():
                        buffered.add(i)
                    time.sleep(0.1)
                run.log_metrics({"curves/train_loss": 1.0 / epoch, "curves/val_acc": epoch / epochs}, step=epoch)
            run.finish("FINISHED")
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(f"run{i}: {e!r}")

    threads = [threading.Thread(target=logger, args=(i,)) for i in range(runs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "store unreachable: buffering to ..."
        for t in threads:
            t.start()
        deadline = time.time() + 120
        while time.time() < deadline and sum((tmp_path / f"run{i}" / "mlflow_run.json").exists()
                                             for i in range(runs)) < runs and not errors:
            time.sleep(0.1)
        go.set()
        time.sleep(2.0)  # every run is logging
        server.stop()
        down = time.time()
        server.start()
        back = time.time()
        for t in threads:
            t.join(timeout=300)
    done = time.time()
    assert not errors, errors
    assert buffered == set(range(runs))  # every run saw the server die and buffered
    # a run still logging when the server returned replays its buffer itself: nothing is left for 'dynconv sync'
    assert not any((tmp_path / f"run{i}" / "tracking_buffer.jsonl").exists() for i in range(runs))

    client = MlflowClient(server.url)
    found = client.search_runs([client.get_experiment_by_name("load").experiment_id])
    assert len(found) == runs and all(r.info.status == "FINISHED" for r in found)
    points = 0
    for r in found:
        for key, expected in (("step/loss", list(range(epochs * steps))),
                              ("curves/train_loss", list(range(1, epochs + 1))),
                              ("curves/val_acc", list(range(1, epochs + 1)))):
            got = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert got == expected, (r.info.run_name, key, got)
            points += len(got)
    print(f"\n{runs} runs, {points} points read back, none lost or duplicated; server down {back - down:.1f} s "
          f"(kill to healthy), every run buffered and replayed its buffer itself; the last run finished "
          f"{done - back:.1f} s after the restart ({epochs * steps * 0.1:.0f} s of logging each)")
