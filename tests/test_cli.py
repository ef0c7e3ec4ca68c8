"""End to end through the `dynconv` CLI: train -> per-subset evaluation -> MLflow, and its error paths."""
import json

import pytest

from dynconv.errors import DynconvError
from helpers import CONFIG, SUBSETS, TEST_WIDTH, assert_one_line_error, cli, cli_here, run_cli, train_args


@pytest.fixture(scope="module")
def trained(tiny_data, module_tmp):
    """One tiny training run through the CLI, shared by the tests below."""
    run_dir = module_tmp("runs") / "tiny"
    assert run_cli(*train_args(tiny_data, run_dir)) == 0
    return run_dir


@pytest.mark.slow
def test_train_writes_checkpoints_and_reports(trained):
    assert (trained / "model.pt").is_file() and (trained / "config.yaml").is_file()
    assert sorted(p.name for p in (trained / "checkpoints").glob("*.pt")) == ["epoch_0014.pt", "epoch_0015.pt"]
    report = json.loads((trained / "eval.json").read_text())
    assert list(report["subsets"]) == SUBSETS
    assert report["model"] == "dynamic_resnet18" and report["image_size"] == 32
    for row in report["subsets"].values():
        assert set(row) == {"accuracy", "precision", "recall", "f1", "f1_macro", "macs"}
    macs = {s: report["subsets"][s]["macs"] for s in SUBSETS}
    # dropping an input channel removes exactly width·49·16·16 MACs of the 7×7 stride-2 stem at 32 px
    assert macs["RGB"] - macs["RG"] == macs["RG"] - macs["R"] == TEST_WIDTH * 49 * 16 * 16
    assert report["subsets"]["RGB"]["accuracy"] > 0.45, report["subsets"]["RGB"]  # chance is 0.25
    assert "| Accuracy |" in (trained / "eval.md").read_text()


@pytest.mark.slow
def test_mlflow_run_has_params_metrics_artifacts(trained):
    import torch
    from mlflow.tracking import MlflowClient

    info = json.loads((trained / "mlflow_run.json").read_text())
    assert info["tracking_uri"] == f"sqlite:///{trained.parent / 'mlruns.db'}"
    client = MlflowClient(info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    p, m = run.data.params, run.data.metrics
    assert p["model.name"] == "dynamic_resnet18" and p["train.epochs"] == "15" and p["data.image_size"] == "32"
    # every argument the model was built with, its defaults too, and the resolved normalisation and store
    ckpt = torch.load(trained / "model.pt", weights_only=True)["dynconv"]
    assert {k: p[f"model.{k}"] for k in ckpt["model_kwargs"] if ckpt["model_kwargs"][k] is not None} == \
        {k: str(v) for k, v in ckpt["model_kwargs"].items() if v is not None}
    assert p["model.stem"] == "torchvision" and p["model.in_chans"] == "3" and "model.switchable_stages" not in p
    assert json.loads(p["data.mean"]) == pytest.approx(ckpt["mean"]) and p["tracking.uri"] == info["tracking_uri"]
    assert p["calibration.batches"] == "20" and "model.calibrate" not in p
    for s in SUBSETS:
        for k in ("acc", "precision", "recall", "f1", "f1_macro", "macs"):
            assert f"subset/{s}/{k}" in m
    report = json.loads((trained / "eval.json").read_text())
    assert m["subset/RGB/acc"] == pytest.approx(report["subsets"]["RGB"]["accuracy"])
    history = client.get_metric_history(run.info.run_id, "curves/train_loss")
    assert sorted(h.step for h in history) == list(range(1, 16))
    assert len(client.get_metric_history(run.info.run_id, "curves/val_acc")) == 15
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "eval.md", "config.yaml", "checkpoints"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/model.pt"]


@pytest.mark.slow
def test_eval_cli_matches_training_report(trained, tiny_data, tmp_path):
    out = tmp_path / "eval.json"
    assert run_cli("eval", trained / "model.pt", "--data", tiny_data / "val", "--subsets", "RGB,R,GB",
                   "--json", out) == 0
    report = json.loads(out.read_text())
    assert list(report["subsets"]) == ["RGB", "R", "GB"]
    trained_report = json.loads((trained / "eval.json").read_text())
    # the .beton holds the folder loader's pixels (dynconv convert --size 32 --store raw): the same scores
    for s in ("RGB", "R", "GB"):
        assert report["subsets"][s] == trained_report["subsets"][s]


@pytest.mark.slow
def test_resume_refuses_to_clobber_and_continues(tiny_data, tmp_path, capsys):
    run_dir = tmp_path / "resumed"
    assert run_cli(*train_args(tiny_data, run_dir, "train.epochs=2")) == 0
    assert run_cli(*train_args(tiny_data, run_dir, "train.epochs=2")) == 2
    assert "already holds a run" in capsys.readouterr().err
    # resume=auto from the newest epoch checkpoint with more epochs: continues at epoch 3, same MLflow run
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert run_cli(*train_args(tiny_data, run_dir, "train.resume=auto", "train.epochs=3")) == 0
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == run_id
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert sorted(h.step for h in client.get_metric_history(run_id, "curves/train_loss")) == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


# ---- bad input: one line on stderr, exit status 2, no traceback, nothing written ---------------------


@pytest.mark.slow
def test_error_missing_data_path(tmp_path):
    proc = cli(*train_args(tmp_path / "nowhere", tmp_path / "run"))
    assert_one_line_error(proc, "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_error_unknown_config_key_and_type(tmp_path, tiny_data, capsys):
    assert_one_line_error(cli_here(capsys, *train_args(tiny_data, tmp_path / "r", "train.epoch=3")),
                           "unknown config key 'train.epoch': did you mean 'train.epochs'?")
    assert_one_line_error(cli_here(capsys, *train_args(tiny_data, tmp_path / "r", "train.lr=fast")), "'train.lr'")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_error_unknown_subset_letter(trained, tiny_data, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert_one_line_error(cli_here(capsys, "eval", trained / "model.pt", "--data", tiny_data / "val", "--subsets", "RGX",
                                "--json", out), "unknown channel letter(s) 'X'")
    assert not out.exists()


@pytest.mark.slow
def test_error_checkpoint_of_another_model(trained, tiny_data, tmp_path, capsys):
    assert_one_line_error(cli_here(capsys, "eval", trained / "model.pt", "--data", tiny_data / "val", "--model", "resnet34"),
                           "holds a dynamic_resnet18 model, not resnet34")
    import torch
    from torchvision.models import resnet18

    plain = tmp_path / "plain.pt"
    torch.save(resnet18().state_dict(), plain)
    assert_one_line_error(cli_here(capsys, "eval", plain, "--data", tiny_data / "val"), "not a dynconv checkpoint")


@pytest.mark.slow
def test_error_empty_class_folder_and_strict(tiny_data, tmp_path, capsys):
    import shutil

    root = tmp_path / "val"
    shutil.copytree(tiny_data / "val", root)
    (next(root.iterdir()) / "junk.jpg").write_bytes(b"garbage")
    assert_one_line_error(cli_here(capsys, "convert", root, tmp_path / "x.beton", "--strict"), "junk.jpg is not an image")
    assert list(tmp_path.glob("*.beton")) == [] and list(tmp_path.glob(".*tmp")) == []
    proc = cli_here(capsys, "convert", root, tmp_path / "x.beton", "--workers", "1")
    assert proc.returncode == 0 and "1 skipped" in proc.stdout and "skipped 1 unreadable" in proc.stderr
    (root / "zz_empty").mkdir()
    assert_one_line_error(cli_here(capsys, "convert", root, tmp_path / "y.beton"), "has no readable images")
    assert not (tmp_path / "y.beton").exists()


@pytest.mark.slow
def test_diverging_loss_stops_with_one_line_and_keeps_checkpoints(tiny_data, tmp_path):
    run_dir = tmp_path / "nan"
    proc = cli(*train_args(tiny_data, run_dir, "train.epochs=2", "train.lr=1e30", "train.momentum=0",
                             "tracking.enabled=false"))
    assert_one_line_error(proc, "training stopped: the loss was")
    assert "train.max_bad_steps" in proc.stderr
    assert not (run_dir / "model.pt").exists()  # no final model from a diverged run
    skipping = cli(*train_args(tiny_data, tmp_path / "skip", "train.epochs=1", "train.lr=1e30",
                                 "train.momentum=0", "tracking.enabled=false", "train.max_bad_steps=1000"))
    assert "skipped a non-finite loss" in skipping.stdout


def test_keys_that_moved_still_load_under_their_new_names():
    """model.calibrate, model.calibration_batches and eval.calibration_batches moved to one section,
    calibration: configs written before load, with one warning per key that says the new name."""
    from dynconv.launch.config import load_config

    with pytest.warns(UserWarning, match="config key model.calibration_batches is now calibration.batches"):
        cfg = load_config(CONFIG, ["model.calibrate=false", "model.calibration_batches=7", "eval.calibration_batches=3"])
    assert (cfg.calibration.enabled, cfg.calibration.batches, cfg.calibration.epoch_batches) == (False, 7, 3)
    assert "calibrate" not in cfg.model.model_dump() and "calibration_batches" not in cfg.eval.model_dump()


@pytest.mark.parametrize("override, suggestion", [("trian.epochs=3", "train.epochs"), ("trian.epoch=3", "train.epochs"),
                                                  ("train.epoch=3", "train.epochs"), ("modle.norm=group", "model.norm")])
def test_a_mistyped_key_is_answered_with_the_key_meant(override, suggestion):
    """A mistyped section is named with its key, so the suggestion comes from the right section."""
    from dynconv.launch.config import load_config

    with pytest.raises(DynconvError) as err:
        load_config(CONFIG, [override])
    assert str(err.value).startswith(f"unknown config key '{override.split('=')[0]}': did you mean '{suggestion}'?")


@pytest.mark.slow
def test_stem_args_reach_the_model_its_checkpoint_and_eval(tiny_data, tmp_path):
    import torch

    run_dir = tmp_path / "run"
    assert run_cli(*train_args(tiny_data, run_dir, "train.epochs=1", "tracking.enabled=false", "eval.subsets=RGB,R",
                               "model.stem_mode=template_mixing", "model.stem_args.num_templates=4")) == 0
    from dynconv.models import model_options

    ckpt = torch.load(run_dir / "model.pt", weights_only=False)
    assert ckpt["dynconv"]["model_kwargs"]["stem_args"] == {"num_templates": 4}
    assert list(ckpt["dynconv"]["model_kwargs"]) == model_options("dynamic_resnet18")  # every one, defaults too
    assert ckpt["dynconv"]["model_kwargs"]["stem"] == "torchvision"
    assert ckpt["model"]["conv1.templates"].shape[0] == 4
    out = tmp_path / "eval.json"
    assert run_cli("eval", run_dir / "model.pt", "--data", tiny_data / "val.beton", "--subsets", "RGB,R",
                   "--json", out) == 0  # rebuilt with 4 templates: the weights load
    assert json.loads(out.read_text())["subsets"] == json.loads((run_dir / "eval.json").read_text())["subsets"]
    bad = cli(*train_args(tiny_data, tmp_path / "bad", "model.stem_mode=hypernet", "model.stem_args.templates=4"))
    assert_one_line_error(bad, "stem_mode=hypernet has no setting 'templates' (takes embed_dim, hidden, init_std)")


# ---- help text: wrapped to the terminal ----------------------------------------------------------------

def test_every_help_fits_100_columns(monkeypatch, capsys):
    """`dynconv train --help` printed its config keys on lines of up to 180 characters; every command's help,
    the keys included, now wraps to the terminal (COLUMNS, as argparse reads it)."""
    import argparse

    from dynconv.launch.cli import build_parser

    monkeypatch.setenv("COLUMNS", "100")
    parser = build_parser()
    helps = {"dynconv": parser.format_help()}
    todo = [("dynconv", parser)]
    while todo:
        name, p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    helps[f"{name} {sub_name}"] = sub.format_help()
                    todo.append((f"{name} {sub_name}", sub))
    assert len(helps) > 20 and "dynconv train" in helps and "dynconv data synth" in helps
    with pytest.raises(SystemExit) as done:
        run_cli("train", "--help")
    assert done.value.code == 0
    helps["dynconv train --help"] = capsys.readouterr().out
    assert "train.ema_decay" in helps["dynconv train --help"]
    wide = {name: [line for line in text.splitlines() if len(line) > 100] for name, text in helps.items()}
    assert not any(wide.values()), {name: lines[:2] for name, lines in wide.items() if lines}


# ---- error hints: one line that says what to do ----------------------------------------------------------

def _in_process(capsys, *argv):
    """``dynconv ARGV`` in this process, as :func:`helpers.assert_one_line_error` reads a subprocess."""
    from types import SimpleNamespace

    capsys.readouterr()
    code = run_cli(*argv)
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def build_parser_help(*names: str) -> str:
    """The help of the subcommand ``names`` (e.g. data synth)."""
    import argparse

    from dynconv.launch.cli import build_parser

    parser = build_parser()
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser.format_help()


def test_a_config_passed_as_checkpoint_says_it_is_a_config(tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text("data:\n  train: d/train\n  val: d/val\nrun:\n  dir: runs/study\n")
    proc = _in_process(capsys, "eval", config, "--data", tmp_path / "val")
    assert_one_line_error(proc, f"{config} is a config file, not a checkpoint: train with it ('dynconv train "
                                f"--config {config}'), then pass the model it writes (runs/study/model.pt)")
    for name in ("demo.txt", "demo"):  # by what it holds, whatever its name
        (tmp_path / name).write_text(CONFIG.read_text())
        assert_one_line_error(_in_process(capsys, "eval", tmp_path / name, "--data", tmp_path / "val"),
                              "is a config file, not a checkpoint: train with it ('dynconv train --config")
    (tmp_path / "eval.json").write_text('{"model": "resnet18", "subsets": {}}')
    assert_one_line_error(_in_process(capsys, "eval", tmp_path / "eval.json", "--data", tmp_path / "val"),
                          "eval.json is a text file (.json), not a checkpoint: pass a file written by 'dynconv train'")
    (tmp_path / "notes").write_text("hi\n")  # once a KeyError's traceback from the unpickler
    assert_one_line_error(_in_process(capsys, "eval", tmp_path / "notes", "--data", tmp_path / "val"),
                          "notes is a text file, not a checkpoint")


def test_a_missing_data_path_says_how_to_make_a_synthetic_set(tmp_path, capsys):
    run_dir = tmp_path / "run"
    common = ["train", "--config", CONFIG, "tracking.enabled=false", f"run.dir={run_dir}", "data.num_workers=0"]
    data = tmp_path / "shapes"
    proc = _in_process(capsys, *common, f"data.train={data / 'train'}", f"data.val={data / 'val'}")
    assert_one_line_error(proc, f"data.train {data / 'train'} does not exist: check the path, or make a synthetic "
                                f"data set there with 'dynconv data synth {data}' (it writes {data}/train and "
                                f"{data}/val)")
    assert not run_dir.exists()
    beton = _in_process(capsys, *common, f"data.train={tmp_path / 'train.beton'}", f"data.val={tmp_path / 'val.beton'}")
    assert_one_line_error(beton, "create it from an image folder with 'dynconv convert IMAGE_FOLDER "
                                 f"{tmp_path / 'train.beton'}'")
    assert "'dynconv data synth DIR' writes a synthetic set" in beton.stderr
    assert "usage: dynconv data synth [-h]" in build_parser_help("data", "synth")  # the command the hint names
    from dynconv.data.synth import write_dataset

    write_dataset(data, num_classes=2, train_per_class=1, val_per_class=1, size=16)
    proc = _in_process(capsys, *common, f"data.train={data / 'train'}", f"data.val={data / 'nope'}")
    assert_one_line_error(proc, f"data.val {data / 'nope'} does not exist: check the path, or make a synthetic "
                                "data set with 'dynconv data synth DIR' (it writes DIR/train and DIR/val)")
    # the library's own message (dynconv eval, convert) says the same without a key
    assert_one_line_error(_in_process(capsys, "convert", tmp_path / "x" / "val", tmp_path / "x.beton"),
                          f"data path {tmp_path / 'x' / 'val'} does not exist: check the path, or make a synthetic "
                          f"data set there with 'dynconv data synth {tmp_path / 'x'}'")


def test_eval_on_data_of_another_class_count_names_model_num_classes(tmp_path, capsys):
    """No training: a checkpoint of an untrained 3-class model, evaluated on a 2-class set."""
    import torch

    from dynconv.data.synth import write_dataset
    from dynconv.models import create_model, resolve_model_kwargs
    from dynconv.train.checkpoint import make_manifest

    kwargs = resolve_model_kwargs("resnet18", num_classes=3, in_chans=3, width=TEST_WIDTH)
    model = create_model("resnet18", **kwargs)
    ckpt = tmp_path / "model.pt"
    torch.save({"dynconv": make_manifest("resnet18", kwargs, "RGB", 16, [0.5] * 3, [0.25] * 3, ["a", "b", "c"]),
                "model": model.state_dict()}, ckpt)
    data = write_dataset(tmp_path / "two", num_classes=2, train_per_class=1, val_per_class=2, size=16)
    proc = _in_process(capsys, "eval", ckpt, "--data", data / "val", "--workers", "0")
    assert_one_line_error(proc, "has 2 classes but the model has 3")
    assert "model.num_classes" in proc.stderr
