"""`dynconv sweep`: Ray Tune (ASHA, PBT, --resume) over the normal trainer on the tiny data, on a local Ray
instance with 2 CPUs started once for the module; MLflow parent/child runs; bad search spaces."""
import json
import os
import shutil
import signal
import threading
import time

import pytest
import torch
from ray.tune import Callback

from dynconv.sweeps.spec import SweepOptions
from helpers import CONFIG, TEST_WIDTH, run_cli

# learns in 2-3 epochs on the tiny data at 1 thread (RGB accuracy ~0.4-0.7 at epoch 2 for lr 2e-3..3e-3,
# chance ~0.25 for lr 1e-7); trials are deterministic (seeded), so are their metrics
def _overrides(data, epochs: int) -> list[str]:
    return [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "model.num_classes=4", "data.image_size=32",
            f"train.epochs={epochs}", "train.batch_size=16", "train.optimizer=adamw", "train.weight_decay=0",
            "data.augment.enabled=false", "model.norm=shared", "data.num_workers=0", "train.keep_checkpoints=1",
            "eval.subsets=RGB,R", f"model.width={TEST_WIDTH}"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from dynconv.sweeps.tuner import init_ray

    started = init_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def sweep_root(module_tmp):
    root = module_tmp("sweeps")
    yield root
    shutil.rmtree(root, ignore_errors=True)  # checkpoints of every trial: about a GB


def _space(path, text: str):
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def asha(tiny_data, ray_cluster, sweep_root):
    """4 trials, 3 epochs, ASHA rung at epoch 2. Two trials that learn come first in the grid; the two with a
    useless learning rate start only when one of those has finished (2 CPUs, 1 per trial), so each reaches the
    rung below a recorded better result and is stopped there."""
    out = sweep_root / "asha"
    space = _space(sweep_root / "asha.yaml", "train.lr: {grid: [0.003, 0.002, 1.0e-7, 1.0e-8]}\n")
    assert run_cli("sweep", "--config", CONFIG, "--space", space, "--search", "grid", "--scheduler", "asha",
                   "--grace-period", "2", "--reduction-factor", "2", "--metric", "acc_RGB", "--max-concurrent", "2",
                   "--out", out, "--quiet", *_overrides(tiny_data, 3), "dropout.kind=none") == 0
    return out


@pytest.mark.slow
def test_asha_stops_weak_trials_early_and_writes_best_config(asha):
    from dynconv.launch.config import load_config

    summary = json.loads((asha / "summary.json").read_text())
    rows = {r["params"]["train.lr"]: r for r in summary["rows"]}
    assert summary["status"] == "finished" and len(rows) == 4 and not any(r["error"] for r in rows.values())
    for lr in (1e-7, 1e-8):
        assert not rows[lr]["finished"] and rows[lr]["epochs"] == 2, rows[lr]
    assert any(r["finished"] and r["epochs"] == 3 for r in rows.values())
    assert summary["trial_epochs"] < 4 * 3
    best = summary["best"]
    assert best["finished"] and best["params"]["train.lr"] in (0.003, 0.002)
    cfg = load_config(asha / "best.yaml")  # a complete config that `dynconv train` accepts
    assert cfg.train.lr == best["params"]["train.lr"] and cfg.train.epochs == 3 and cfg.train.resume is None
    assert cfg.run.dir == str(asha / "best") and not (asha / "best").exists()
    table = (asha / "summary.md").read_text()
    assert "| trial | train.lr | epochs | acc_RGB (%) | stopped early |" in table and "| yes |" in table


@pytest.mark.slow
def test_asha_logs_parent_and_child_mlflow_runs(asha):
    from mlflow.tracking import MlflowClient

    info = json.loads((asha / "mlflow_run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    parent = client.get_run(info["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.scheduler"] == "asha"
    assert parent.data.metrics["trials"] == 4 and parent.data.metrics["trials_stopped_early"] >= 2
    assert {a.path for a in client.list_artifacts(info["run_id"])} >= {"best.yaml", "summary.md", "sweep.json"}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{info['run_id']}'")
    assert len(children) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        epochs = int(child.data.tags["dynconv.sweep.epochs"])
        stopped = child.data.tags["dynconv.sweep.stopped_early"] == "true"
        assert stopped == (epochs < 3)
        history = client.get_metric_history(child.info.run_id, "curves/val_acc_RGB")
        assert sorted(m.step for m in history) == list(range(1, epochs + 1))
        assert float(child.data.params["train.lr"]) in (0.003, 0.002, 1e-7, 1e-8)
        assert ("subset/RGB/acc" in child.data.metrics) == (not stopped)  # the final evaluation of finished trials


class InterruptOnce(Callback):
    """Presses Ctrl+C when the first trial completes, once: the marker file makes it one-shot, since Tune
    restores callbacks with the sweep."""

    def __init__(self, marker: str):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if os.path.exists(self.marker):
            os.unlink(self.marker)
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_resume_after_interrupt_does_not_rerun_finished_trials(tiny_data, ray_cluster, sweep_root):
    from mlflow.tracking import MlflowClient

    from dynconv.launch.sweep import run_sweep

    out, marker = sweep_root / "resume", sweep_root / "interrupt-once"
    marker.touch()
    space = _space(sweep_root / "resume.yaml", "train.lr: {grid: [0.003, 0.002, 0.001]}\n")
    first = run_sweep(out, CONFIG, space, _overrides(tiny_data, 2) + ["dropout.kind=none"],
                      SweepOptions(scheduler="fifo", search="grid", max_concurrent=1), verbose=0,
                      callbacks=[InterruptOnce(str(marker))])
    assert first["status"] == "interrupted" and not marker.exists()
    done = [r["trial"] for r in first["rows"] if r["finished"]]
    assert done, first["rows"]
    stamps = {t: (out / "trials" / t / "eval.json").stat().st_mtime_ns for t in done}
    assert run_cli("sweep", "--out", out, "--resume", "--quiet") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and len(summary["rows"]) == 3
    assert all(r["finished"] and r["epochs"] == 2 for r in summary["rows"])
    assert {t: (out / "trials" / t / "eval.json").stat().st_mtime_ns for t in done} == stamps  # not re-run
    info = json.loads((out / "mlflow_run.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    assert info["run_id"] == summary["parent_run_id"] and client.get_run(info["run_id"]).info.status == "FINISHED"
    children = client.search_runs([client.get_run(info["run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{info['run_id']}'")
    assert len(children) == 3  # one MLflow run per trial, none duplicated by the resume
    for child in children:
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "curves/train_loss")) == [1, 2]


@pytest.mark.slow
def test_pbt_exploits_a_stronger_trial(tiny_data, ray_cluster, sweep_root):
    from dynconv.launch.sweep import run_sweep

    out = sweep_root / "pbt"
    space = _space(sweep_root / "pbt.yaml", "train:\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"
                                            "dropout:\n  p: {uniform: [0.2, 0.6]}\n")
    result = run_sweep(out, CONFIG, space, _overrides(tiny_data, 2) + ["dropout.kind=constant"],
                       SweepOptions(scheduler="pbt", num_samples=2, perturbation_interval=1), verbose=0)
    rows = result["rows"]
    assert result["status"] == "finished" and len(rows) == 2
    assert all(r["finished"] and r["epochs"] == 2 and not r["error"] for r in rows)
    # synchronous PBT with 2 trials: at epoch 1 the lower one takes the upper one's checkpoint and values
    exploited = [r for r in rows if r["exploits"]]
    assert len(exploited) == 1 and exploited[0]["exploits"] == 1
    trial = exploited[0]
    state = json.loads((out / "trials" / trial["trial"] / "sweep_trial.json").read_text())
    donor = next(r for r in rows if r["trial"] == state["exploits"][0]["from"])
    assert state["exploits"][0]["epoch"] == 1 and donor is not trial
    assert 1e-3 <= trial["params"]["train.lr"] <= 1e-2 and 0.2 <= trial["params"]["dropout.p"] <= 0.6  # clipped
    from dynconv.launch.config import load_config

    assert load_config(out / "trials" / trial["trial"] / "config.yaml").train.lr == trial["params"]["train.lr"]


@pytest.mark.slow
def test_failing_trials_end_the_sweep_with_one_line(tiny_data, ray_cluster, sweep_root, capsys, caplog):
    from mlflow.tracking import MlflowClient

    out = sweep_root / "fail"
    space = _space(sweep_root / "fail.yaml", "dropout.kind: {grid: [weighted_subsets]}\n")  # no dropout.weights
    assert run_cli("sweep", "--config", CONFIG, "--space", space, "--search", "grid", "--out", out, "--quiet",
                   *_overrides(tiny_data, 2)) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("dynconv: error: every trial of the sweep failed (first: dropout.weights needs subset "
                           "names of 'RGB'"), last
    assert not [r for r in caplog.records if "Trials did not complete" in r.getMessage()]  # Ray's repeat of it
    assert list(out.glob("tune/*/error.txt")), "the failed trial's traceback is kept"
    info = json.loads((out / "mlflow_run.json").read_text())
    assert MlflowClient(info["tracking_uri"]).get_run(info["run_id"]).info.status == "FAILED"
    assert not (out / "best.yaml").exists()


def test_runs_a_trial_could_not_close_are_closed_by_the_sweep(tmp_path):
    """Tune ends a stopped trial's actor without waiting for its thread: a run left RUNNING (with records
    still buffered) gets its buffered records and the status its trial reached; a closed run keeps its own."""
    from mlflow.tracking import MlflowClient

    from dynconv.launch.tracking import MlflowRun
    from dynconv.run_files import TRACKING_BUFFER
    from dynconv.launch.sweep import settle_trial_runs
    from dynconv.sweeps.results import TrialRow

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    runs = {t: MlflowRun(uri, "sweep", tmp_path / "trials" / t, t) for t in ("stopped", "failed", "finished", "killed")}
    (tmp_path / "trials" / "stopped" / TRACKING_BUFFER).write_text(json.dumps(
        {"op": "metrics", "metrics": {"curves/val_acc_RGB": 0.25}, "step": 2, "timestamp": 0}) + "\n")
    runs["killed"].finish("KILLED")
    rows = [TrialRow("stopped", {}, 2, 2, 0.25, False, None), TrialRow("failed", {}, 1, 1, None, False, "boom"),
            TrialRow("finished", {}, 3, 3, 0.5, True, None), TrialRow("killed", {}, 1, 1, 0.1, False, None),
            TrialRow("never-started", {}, 0, 0, None, False, "aborted")]
    settle_trial_runs(rows, tmp_path / "trials")
    client = MlflowClient(uri)
    got = {t: client.get_run(r.run_id) for t, r in runs.items()}
    assert {t: r.info.status for t, r in got.items()} == {"stopped": "FINISHED", "failed": "FAILED",
                                                          "finished": "FINISHED", "killed": "KILLED"}
    assert [m.value for m in client.get_metric_history(runs["stopped"].run_id, "curves/val_acc_RGB")] == [0.25]
    assert not (tmp_path / "trials" / "stopped" / TRACKING_BUFFER).exists()
    stopped = got["stopped"].data.tags
    assert stopped["dynconv.stopped_early"] == "true" and "after epoch 2" in stopped["dynconv.stopped_early.reason"]
    assert "dynconv.stopped_early" not in got["failed"].data.tags
    assert {t: (r.data.tags["dynconv.sweep.stopped_early"], r.data.tags["dynconv.sweep.epochs"])
            for t, r in got.items()} == {"stopped": ("true", "2"), "failed": ("false", "1"),
                                         "finished": ("false", "3"), "killed": ("true", "1")}


def test_a_trial_aborted_before_reporting_does_not_take_another_trials_result(tmp_path):
    """Ray hands a trial that it aborted on a re-used actor that actor's previous trial's last result."""
    from types import SimpleNamespace

    from dynconv.sweeps.results import collect_rows

    def result(trial, metrics, error=None):
        return SimpleNamespace(path=str(tmp_path / "tune" / trial), metrics=metrics, metrics_dataframe=None,
                               config=metrics.get("config"), error=error)

    own = {"trial_id": "t0", "epoch": 2, "acc_RGB": 0.4, "config": {"train.lr": 0.003}}
    results = [result("t0", own), result("t2", own, RuntimeError("Trainable runner reuse requires reset_config()"))]
    trials = [SimpleNamespace(trial_id="t0", config={"train.lr": 0.003}),
              SimpleNamespace(trial_id="t2", config={"train.lr": 1e-7})]
    rows = {r.trial: r for r in collect_rows(results, trials, tmp_path / "trials", "acc_RGB")}
    assert (rows["t0"].params, rows["t0"].epochs, rows["t0"].metric) == ({"train.lr": 0.003}, 2, 0.4)
    t2 = rows["t2"]
    assert (t2.params, t2.epochs, t2.metric, t2.finished) == ({"train.lr": 1e-7}, 0, None, False)
    assert "reset_config" in t2.error


def test_trial_workers_wait_for_a_stopped_trial_before_reuse(monkeypatch):
    """Ray's 2 s wait before re-using a worker failed the next trial when a stopped one took longer to close
    its MLflow run on a busy machine."""
    import ray

    from dynconv.sweeps.tuner import init_ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # keep init_ray from generating a token in this process
    assert init_ray(num_cpus=1)
    assert float(seen["runtime_env"]["env_vars"]["TUNE_FUNCTION_THREAD_TIMEOUT_S"]) >= 60
    monkeypatch.setenv("TUNE_FUNCTION_THREAD_TIMEOUT_S", "7")
    init_ray(num_cpus=1)
    assert seen["runtime_env"]["env_vars"]["TUNE_FUNCTION_THREAD_TIMEOUT_S"] == "7"


def test_rescale_lr_moves_a_resumed_schedule_to_the_new_rate():
    from dynconv.train import build_optimizer, build_scheduler
    from dynconv.sweeps.trainable import rescale_lr

    def make(lr):
        model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        opt = build_optimizer(model, "sgd", lr, 5e-4, 0.9)
        return opt, build_scheduler(opt, "cosine", 10, warmup_epochs=2)

    opt, sched = make(0.1)
    for _ in range(3):
        opt.step()
        sched.step()
    ckpt = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    assert rescale_lr(ckpt, 0.05) and not rescale_lr(ckpt, 0.05)
    ref_opt, ref_sched = make(0.05)  # what a run at 0.05 from the start has at this point
    for _ in range(3):
        ref_opt.step()
        ref_sched.step()
    new_opt, new_sched = make(0.1)
    new_opt.load_state_dict(ckpt["optimizer"])
    new_sched.load_state_dict(ckpt["scheduler"])
    for _ in range(2):
        assert [g["lr"] for g in new_opt.param_groups] == pytest.approx([g["lr"] for g in ref_opt.param_groups])
        new_opt.step()
        new_sched.step()
        ref_opt.step()
        ref_sched.step()


def _shipped_space_samples(name: str, overrides: list[str] = (), n: int = 30):
    """sweeps/spaces/NAME.yaml loaded on the test config (with ``overrides``), and ``n`` of its samples, each
    applied to that config and validated whole, as a trial gets it."""
    import numpy as np

    from dynconv.launch.config import SCHEMA, load_config
    from dynconv.sweeps.space import apply_params, load_space

    base = load_config(CONFIG, list(overrides)).model_dump()
    space = load_space(CONFIG.parents[2] / "sweeps" / "spaces" / f"{name}.yaml", SCHEMA, base)
    rng = np.random.default_rng(0)
    return space, [apply_params(base, {d.key: d.domain().sample(random_state=rng) for d in space.dims}, SCHEMA)
                   for _ in range(n)]


def test_shipped_dropout_space_samples_valid_configs():
    from types import SimpleNamespace

    from dynconv.dropout import ChannelDropout

    space, samples = _shipped_space_samples("dropout")
    assert set(space.keys) == {"dropout.kind", "dropout.p", "dropout.weights", "dropout.curriculum",
                               "dropout.ramp_epochs", "dropout.steps", "train.lr", "model.stem_mode"}
    assert set(space.pbt_mutations()) == set(space.keys) - {"model.stem_mode"}
    for cfg in samples:  # every sample is a config the trainer accepts, with a schedule that builds
        d = SimpleNamespace(**cfg["dropout"])
        schedule = ChannelDropout(d.kind, 3, p=d.p, weights=d.weights, curriculum=d.curriculum,
                                  ramp_epochs=d.ramp_epochs, steps=d.steps, channels="RGB")
        assert schedule.probabilities(1).sum() == pytest.approx(1)


def test_shipped_sandwich_space_samples_configs_the_trainer_accepts():
    """sweeps/spaces/sandwich.yaml: every sample validates as a whole config (the sandwich's own checks
    included) and builds a schedule of n_subsets passes, the full input first, weights summing to 1."""
    from types import SimpleNamespace

    from dynconv.dropout import ChannelDropout
    from dynconv.errors import DynconvError

    with pytest.raises(DynconvError, match="set dropout.kind=sandwich"):  # the base config must be a sandwich
        _shipped_space_samples("sandwich")
    space, samples = _shipped_space_samples("sandwich", ["dropout.kind=sandwich"])
    assert set(space.keys) == {"dropout.n_subsets", "dropout.full_weight", "train.lr",
                               "train.inplace_distill", "train.inplace_temperature"}
    seen = set()
    for cfg in samples:
        d, t = SimpleNamespace(**cfg["dropout"]), SimpleNamespace(**cfg["train"])
        passes = ChannelDropout(d.kind, 3, seed=1, n_subsets=d.n_subsets, full_weight=d.full_weight).passes(1, 0)
        assert len(passes) == d.n_subsets and passes[0][0] == (0, 1, 2)
        assert sum(w for _, w in passes) == pytest.approx(1)
        seen.add((d.n_subsets, t.inplace_distill))
    assert {n for n, _ in seen} == {2, 3, 4, 5} and {i for _, i in seen} == {False, True}


@pytest.mark.parametrize("space, message", [
    ("dropout.pp: {uniform: [0.1, 0.5]}\n", "unknown config key 'dropout.pp': did you mean 'dropout.p'?"),
    ("dropout.p: {uniform: [0.1, 1.5]}\n", "config key 'dropout.p': Input should be less than 1"),
    ("train.lr: {normal: [0.01, 0.001]}\n", "train.lr: unknown distribution 'normal'"),
    ("train.lr: 0.01\n", "train.lr needs one distribution"),
    ("train.lr: {uniform: [0.1, 0.01]}\n", "train.lr: uniform needs low < high"),
    ("train.epochs: {grid: [5, 10]}\n", "train.epochs cannot be searched"),
    ("dropout.kind: {choice: [sometimes]}\n", "config key 'dropout.kind'"),
    ("- train.lr\n", "must map config keys to distributions"),
    ("train.lr: {uniform: [0.01\n", "is not valid YAML"),
])
def test_bad_search_space_is_one_line_error(tmp_path, capsys, space, message):
    path = _space(tmp_path / "space.yaml", space)
    out = tmp_path / "out"
    assert run_cli("sweep", "--config", CONFIG, "--space", path, "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynconv: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--search", "grid"], "--search grid needs finite values, but train.lr"),
    (["--scheduler", "pbt", "--search", "grid"], "--search grid needs finite values"),
    (["--metric", "acc_RGBX"], "--metric acc_RGBX: choose one of worst_subset_acc, mean_subset_acc, acc_RGB"),
    (["--resources-per-trial", "cpu=1,tpu=2"], "--resources-per-trial 'cpu=1,tpu=2'"),
    (["--scheduler", "hyperband"], "--scheduler hyperband: choose one of asha, pbt, fifo"),
    (["--resume"], "holds no Ray Tune state to resume"),
    ([], "data.train demo-out/data/train.beton does not exist"),
])
def test_bad_sweep_options_are_one_line_errors(tmp_path, capsys, args, message):
    path = _space(tmp_path / "space.yaml", "train.lr: {loguniform: [0.001, 0.1]}\n")
    out = tmp_path / "out"
    assert run_cli("sweep", "--config", CONFIG, "--space", path, "--out", out, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynconv: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_pbt_needs_a_key_it_can_mutate(tmp_path, capsys):
    path = _space(tmp_path / "space.yaml", "model.stem_mode: {choice: [prefix, slice]}\n")
    assert run_cli("sweep", "--config", CONFIG, "--space", path, "--scheduler", "pbt", "--out", tmp_path / "o") == 2
    assert "--scheduler pbt mutates train.lr and dropout.* keys" in capsys.readouterr().err


def test_optuna_search_without_optuna_says_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)  # as if it were not installed
    path = _space(tmp_path / "space.yaml", "train.lr: {loguniform: [0.001, 0.1]}\n")
    assert run_cli("sweep", "--config", CONFIG, "--space", path, "--search", "optuna", "--out", tmp_path / "o") == 2
    assert "pip install optuna" in capsys.readouterr().err


def test_numbers_without_a_dot_are_numbers_in_every_yaml_file(tmp_path):
    """PyYAML reads YAML 1.1, where ``1e-3`` is a string: space files failed ("needs numbers, got '1e-3'").
    Every dynconv file is read with YAML 1.2 numbers."""
    from dynconv.launch.config import SCHEMA, load_config
    from dynconv.sweeps.space import load_space

    space = load_space(_space(tmp_path / "s.yaml", "train.lr: {loguniform: [1e-3, 1e-1]}\ndropout.p: {uniform: [1e-1, 5E-1]}\n"), SCHEMA)
    assert [d.args for d in space.dims] == [(1e-3, 1e-1), (0.1, 0.5)]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  lr: 3e-2\n  weight_decay: 1e-4\n")
    assert load_config(cfg).train.lr == 0.03 and load_config(cfg).train.weight_decay == 1e-4


@pytest.mark.slow
def test_asha_best_is_the_trial_whose_final_evaluation_is_best(textures_small, ray_cluster, sweep_root):
    """Per-epoch subset metrics are measured on calibrated statistics (the model as evaluated): over a small
    dropout space on the harder set, the metric ASHA ranks a finished trial by at its last epoch is the final
    evaluation the trial wrote itself (eval.json), and the best trial is the one whose final evaluation is best."""
    from dynconv.launch.sweep import run_sweep
    from dynconv.sweeps.spec import TRIALS_DIR, TUNE_DIR

    space = _space(sweep_root / "consistent.yaml",
                   "dropout.kind: {grid: [none, constant, uniform_subsets, hierarchical]}\n")
    overrides = [f"data.train={textures_small / 'train.beton'}", f"data.val={textures_small / 'val.beton'}",
                 "model.num_classes=6", "data.image_size=32", "train.epochs=4", "train.batch_size=32",
                 "train.lr=0.05", "model.norm=recalibrate", "data.num_workers=1", "train.keep_checkpoints=1",
                 "tracking.enabled=false", "calibration.epoch_batches=2"]
    out = sweep_root / "consistent"
    result = run_sweep(out, CONFIG, space, overrides,
                       SweepOptions(scheduler="asha", search="grid", metric="mean_subset_acc", grace_period=1,
                                    reduction_factor=2, max_concurrent=2), verbose=0)
    rows = result["rows"]
    assert any(r["finished"] for r in rows) and any(not r["finished"] for r in rows), rows
    final = {}
    for row in rows:
        if row["error"]:  # fail with the trial's traceback and log, not only its last line
            texts = [p.read_text()[-3000:] for p in (out / TUNE_DIR / row["trial"] / "error.txt",
                                                       out / TRIALS_DIR / row["trial"] / "train.log") if p.exists()]
            pytest.fail(f"trial {row['trial']} failed: {row['error']}\n" + "\n---\n".join(texts))
        written = out / TRIALS_DIR / row["trial"] / "eval.json"
        assert written.exists() == row["finished"], row  # stopped trials end without a final evaluation
        if row["finished"]:
            final[row["trial"]] = json.loads(written.read_text())["summary"]["mean_subset_acc"]
            assert row["metric"] == pytest.approx(final[row["trial"]], abs=1e-12), row
    assert result["best"]["trial"] == max(final, key=final.get), (final, result["best"])

_SERVERS: dict = {}  # the tracking server of a running test, by key (Tune pickles callbacks: they hold only the key)


class KillTrackingServerOnce(Callback):
    """At the first result of any trial: kill the sweep's tracking server (SIGKILL) and start it again, on the
    same port and database, in the background."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_result(self, iteration, trials, trial, result, **info):
        state = _SERVERS[self.key]
        if "down" in state:
            return
        state["server"].stop()
        state["down"] = time.time() * 1000

        def restart():
            time.sleep(2)
            state["server"].start()
            state["back"] = time.time() * 1000

        state["thread"] = threading.Thread(target=restart, daemon=True)
        state["thread"].start()


@pytest.mark.slow
def test_a_tracking_server_killed_mid_sweep_loses_nothing(tiny_data, ray_cluster, sweep_root):
    """The sweep's `mlflow server` dies at the first trial result and comes back a little later: every trial
    finishes, records logged meanwhile reach the server afterwards (each trial's buffer replays; a trial that
    starts while the server is down waits for it, tracking.wait_s), one MLflow run per trial, every epoch once."""
    from mlflow.tracking import MlflowClient

    from dynconv.launch.sweep import run_sweep
    from mlflow_server_helpers import Server

    server = Server(sweep_root / "server")
    server.start()
    _SERVERS["kill"] = state = {"server": server}
    try:
        out = sweep_root / "server-sweep"
        space = _space(sweep_root / "server.yaml", "train.lr: {grid: [0.003, 0.002, 0.001]}\n")
        summary = run_sweep(out, CONFIG, space, _overrides(tiny_data, 3) + [
            "dropout.kind=none", f"tracking.uri={server.url}", "tracking.experiment=server-sweep"],
            SweepOptions(scheduler="fifo", search="grid", max_concurrent=2), verbose=0,
            callbacks=[KillTrackingServerOnce("kill")])
        state["thread"].join(timeout=120)
        assert "back" in state, "the tracking server did not come back"
        assert summary["status"] == "finished" and len(summary["rows"]) == 3
        assert all(r["finished"] and r["epochs"] == 3 for r in summary["rows"]), summary["rows"]

        client = MlflowClient(server.url)
        parent = client.get_run(summary["parent_run_id"])
        assert parent.info.status == "FINISHED"
        children = client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
        assert len(children) == 3  # one run per trial: none created twice by a retry
        logged_while_down = 0
        for child in children:
            assert child.info.status == "FINISHED" and {"subset/RGB/acc", "subset/R/acc"} <= set(child.data.metrics)
            history = client.get_metric_history(child.info.run_id, "curves/train_loss")
            assert sorted(m.step for m in history) == [1, 2, 3], child.info.run_name
            logged_while_down += sum(state["down"] <= m.timestamp <= state["back"] for m in history)
        assert logged_while_down > 0  # points logged while the server was dead arrived afterwards
        assert not list((out / "trials").glob("*/tracking_buffer.jsonl"))
    finally:
        _SERVERS.pop("kill", None)
        server.stop()
