"""One model over datasets with different channels (data.train as a list): the channel vocabulary, the
interleaving, the config's checks, and a mixed run from training (interrupted and resumed) to compare."""
import json

import numpy as np
import pytest
import torch

from dynconv.channels import subsets_within
from dynconv.data.mixture import MixturePart, interleave, positions_in, vocabulary
from dynconv.errors import DynconvError
from helpers import CONFIG, TEST_WIDTH, run_cli, stop_after

SENSORS = "[R, G, UV, IR, Depth]"


def test_vocabulary_is_the_union_in_order_and_shared_names_share_a_channel():
    vocab = vocabulary(["RGB", "R-G-UV-IR-Depth"])
    assert vocab == "R-G-B-UV-IR-Depth"
    assert positions_in("RGB", vocab) == (0, 1, 2)
    assert positions_in("R-G-UV-IR-Depth", vocab) == (0, 1, 3, 4, 5)  # R and G: the RGB set's channels 0, 1
    with pytest.raises(DynconvError, match="channel\\(s\\) DNA of 'DNA-R' are not in the model's channels"):
        positions_in("DNA-R", vocab)


def test_a_part_shows_its_channels_where_the_vocabulary_has_them():
    part = MixturePart("sensors", "R-G-UV-IR-Depth", (0, 1, 3, 4, 5), 6, None, lambda x: x.float())
    x = torch.arange(2 * 5 * 2 * 2, dtype=torch.uint8).view(2, 5, 2, 2)
    full = part.model_transform(x)
    assert full.shape == (2, 6, 2, 2)
    assert torch.equal(full[:, [0, 1, 3, 4, 5]], x.float()) and not full[:, 2].any()  # B absent: 0
    assert part.to_model((4, 0)) == (0, 5)   # Depth and R of the dataset: the model's R and Depth
    rgb = MixturePart("rgb", "RGB", (0, 1, 2), 3, None, lambda x: x)
    assert rgb.place(x[:, :3]) is not None and rgb.place(x[:, :3]).shape[1] == 3


def test_interleaving_visits_every_batch_once_in_an_order_fixed_by_seed_and_epoch():
    a = interleave([5, 3], seed=0, epoch=1)
    assert sorted(a.tolist()) == [0] * 5 + [1] * 3
    assert np.array_equal(a, interleave([5, 3], seed=0, epoch=1))
    orders = {tuple(interleave([5, 3], seed=s, epoch=e)) for s in (0, 1) for e in (1, 2, 3)}
    assert len(orders) > 1


def test_subsets_within_a_dataset_keep_its_spelling():
    assert subsets_within("RGB,R-G,IR,R", "RGB") == "RGB,RG,R"
    assert subsets_within("RGB,R-G,IR,R", "R-G-UV-IR-Depth") == "R-G,IR,R"
    assert subsets_within("all", "RGB") == "all" and subsets_within("UV", "RGB") == ""


def _mixture(rgb, sensors, **extra) -> str:
    entries = [f"{{name: rgb, path: {rgb}/train.beton, val: {rgb}/val.beton, channels: RGB}}",
               f"{{name: sensors, path: {sensors}/train.beton, val: {sensors}/val.beton, channels: {SENSORS}"
               + "".join(f", {k}: {v}" for k, v in extra.items()) + "}"]
    return f"data.train=[{', '.join(entries)}]"


NO_VAL = "data.val=null"  # the demo config's val is one dataset's: each dataset of a mixture has its own


def test_the_config_derives_the_vocabulary_and_refuses_what_a_mixture_cannot_do(tmp_path):
    from dynconv.launch.config import load_config

    cfg = load_config(CONFIG, [_mixture("a", "b"), NO_VAL])
    assert cfg.data.channels == "R-G-B-UV-IR-Depth" and [e.label for e in cfg.data.mixture] == ["rgb", "sensors"]
    assert cfg.data.mixture[1].channels == "R-G-UV-IR-Depth"
    wider = load_config(CONFIG, [_mixture("a", "b"), NO_VAL, "data.channels=[R, G, B, UV, IR, Depth, DNA]"])
    assert wider.data.channels.endswith("-DNA")  # a vocabulary may name channels a later dataset brings
    ordered = load_config(CONFIG, [_mixture("a", "b"), NO_VAL, "data.channels=[Depth, R]"])
    assert ordered.data.channels == "Depth-R-G-B-UV-IR"  # the names given first, then the rest of the union
    for extra, fragment in (
            (["data.val=x.beton"], "data.val is set but data.train is a list of datasets"),
            (["eval.subsets=RGB,DNA"], "eval.subsets names 'DNA', a subset of no dataset"),
            (["train.teacher=t.pt"], "train.teacher is not supported with a mixture"),
            (["model.stem_mode=prefix"], "model.stem_mode=prefix (the default of dynamic_* models) ignores which channel"),
            (["data.train=[{path: a, val: b}, {path: c, val: d}]"], "two datasets called 'RGB'"),
            ([_mixture("a", "b", mean=[0.5])], "data.train[sensors].mean needs one value per channel")):
        with pytest.raises(DynconvError, match=__import__("re").escape(fragment)):
            load_config(CONFIG, [_mixture("a", "b"), NO_VAL, *extra])


@pytest.fixture(scope="module")
def two_sets(module_tmp):
    """The shapes set (RGB) and the sensors set (R, G, UV, IR, Depth; the same scenes and classes): 4 classes x
    (24 train, 8 val) at 24 px each, as .beton files."""
    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton
    from dynconv.data.synth import write_dataset

    root = module_tmp("mixture")
    for name, kind, seed in (("rgb", "shapes", 0), ("sensors", "sensors", 1)):
        write_dataset(root / name, num_classes=4, train_per_class=24, val_per_class=8, size=24, seed=seed, kind=kind)
        for split in ("train", "val"):  # arrays at --size with 2 writer workers (a field of the wrong shape hung)
            write_beton(scan_image_folder(root / name / split), root / name / f"{split}.beton", size=24,
                        store="raw", num_workers=2)
    return root


@pytest.mark.slow
def test_a_mixed_run_resumes_bitwise_and_reads_back_per_dataset(two_sets, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from dynconv.launch.config import load_config
    from dynconv.launch.training import run_training
    from dynconv.train import TrainingPreempted

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"

    def cfg(name, *extra):
        return load_config(CONFIG, [_mixture(two_sets / "rgb", two_sets / "sensors", mean="auto", std="auto"), NO_VAL,
                                    "data.image_size=24", "model.num_classes=4", f"model.width={TEST_WIDTH}",
                                    "train.epochs=2", "train.batch_size=16", "train.every_steps=3",
                                    "data.num_workers=1", f"run.dir={tmp_path / name}", f"tracking.uri={uri}",
                                    f"run.name={name}", "eval.every_epoch=true", "calibration.batches=2", *extra])

    reference = run_training(cfg("reference"))
    with pytest.raises(TrainingPreempted) as stop:  # 6 + 6 steps an epoch, interleaved
        run_training(cfg("stopped"), hooks=[stop_after(iter(range(10_000)), 15)])
    assert (stop.value.epoch, stop.value.step) == (2, 3)
    resumed = run_training(cfg("stopped", "train.resume=auto"))
    a = torch.load(reference["checkpoint"], weights_only=True)
    b = torch.load(resumed["checkpoint"], weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # batch order, subsets: all replayed
    # one stem over the vocabulary: R and G of both datasets are the same input channels
    manifest = a["dynconv"]
    assert manifest["channels"] == "R-G-B-UV-IR-Depth" and manifest["model_kwargs"]["in_chans"] == 6
    assert [(d["name"], d["channels"], len(d["mean"])) for d in manifest["datasets"]] == [
        ("rgb", "RGB", 3), ("sensors", "R-G-UV-IR-Depth", 5)]

    report = json.loads((tmp_path / "reference" / "eval.json").read_text())
    assert {n: len(d["subsets"]) for n, d in report["datasets"].items()} == {"rgb": 7, "sensors": 31}
    assert len(report["subsets"]) == 38 and report["subsets"]["rgb:RGB"] == report["datasets"]["rgb"]["subsets"]["RGB"]
    assert report["subsets"]["sensors:R-G"]["macs"] == report["subsets"]["rgb:RG"]["macs"]  # the same 2 stem channels
    assert report["subsets"]["rgb:RGB"]["macs"] > report["subsets"]["rgb:R"]["macs"]

    # dynconv eval: which dataset the data is (by channel count, or --dataset), rows in its names
    out = tmp_path / "sensors.json"
    model = tmp_path / "reference" / "model.pt"
    assert run_cli("eval", model, "--data", two_sets / "sensors" / "val.beton", "--subsets", "R-G,Depth",
                   "--json", out) == 0
    one = json.loads(out.read_text())
    assert one["dataset"] == "sensors" and list(one["subsets"]) == ["R-G", "Depth"]
    assert one["subsets"]["R-G"]["accuracy"] == pytest.approx(report["subsets"]["sensors:R-G"]["accuracy"])
    assert run_cli("eval", model, "--data", two_sets / "rgb" / "val.beton", "--dataset", "cells") == 2
    assert "trained on datasets rgb, sensors, not 'cells'" in capsys.readouterr().err

    # MLflow: each dataset's accuracy every epoch; compare: a row per dataset
    client = MlflowClient(uri)
    run_id = reference["run_id"]
    inputs = {i.dataset.name: json.loads(i.dataset.schema)["channels"] for i in client.get_run(run_id).inputs.dataset_inputs}
    assert inputs == {"rgb/train.beton": ["R", "G", "B"], "rgb/val.beton": ["R", "G", "B"],
                      "sensors/train.beton": ["R", "G", "UV", "IR", "Depth"],
                      "sensors/val.beton": ["R", "G", "UV", "IR", "Depth"]}
    for key in ("val_acc", "val_acc:rgb", "val_acc:sensors", "val_acc_rgb:RG", "val_acc_sensors:R-G-UV-IR-Depth",
                "val_worst_subset_acc"):
        assert [m.step for m in client.get_metric_history(run_id, f"curves/{key}")] == [1, 2], key
    last = {key: client.get_metric_history(run_id, f"curves/val_acc_{key}")[-1].value for key in report["subsets"]}
    # the last epoch calibrates every subset as the final checkpoint is: its read-outs are the final evaluation's
    assert last == {key: pytest.approx(row["accuracy"]) for key, row in report["subsets"].items()}
    assert client.get_metric_history(run_id, "curves/val_worst_subset_acc")[-1].value == pytest.approx(min(last.values()))
    capsys.readouterr()
    assert run_cli("compare", "--tracking-uri", uri, "--format", "json", "--filter", "attributes.run_name = 'reference'") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["dataset"], r["full"], len(r["acc"])) for r in rows] == [("rgb", "RGB", 7), ("sensors", "R-G-UV-IR-Depth", 31)]
    assert rows[1]["acc"]["R-G"] == pytest.approx(report["subsets"]["sensors:R-G"]["accuracy"])
    assert rows[0]["mean_subset_acc"] == pytest.approx(report["datasets"]["rgb"]["summary"]["mean_subset_acc"])
    assert run_cli("compare", "--tracking-uri", uri, "--format", "csv") == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("run_id,run,dataset,model")


@pytest.mark.slow
def test_training_on_both_datasets_beats_each_alone_on_the_channels_they_share(two_sets, tmp_path):
    """The point of a mixture: the R and G channels that both datasets have learn from both. In this
    small-data regime (96 training images a dataset), the mean accuracy over the shared-channel subsets (RG,
    R, G) is higher for one model trained on both than for a model trained on each dataset alone, averaged over
    both datasets and 4 seeds (each run: the same epochs over its own data), and neither dataset loses on
    average. Measured over 6 seeds: +8.2 points (rgb, seed SD 10.1) and +8.0 (sensors, SD 6.6); single seeds
    swing either way, so 2 seeds failed about one run in six."""
    from dynconv.launch.config import load_config
    from dynconv.launch.training import run_training

    common = ["data.image_size=24", "model.num_classes=4", f"model.width={TEST_WIDTH}", "train.epochs=8",
              "train.batch_size=16", "train.lr=0.02", "data.num_workers=1", "tracking.enabled=false",
              "model.norm=shared", "eval.subsets=R-G,R,G", "train.log_every_steps=0"]
    alone = {"rgb": "RGB", "sensors": SENSORS}
    gains = {name: [] for name in alone}
    for seed in range(4):
        def run(name, *extra):
            cfg = load_config(CONFIG, [*common, f"train.seed={seed}", f"run.dir={tmp_path / f'{name}_{seed}'}", *extra])
            return run_training(cfg)["report"]

        mixed = run("both", _mixture(two_sets / "rgb", two_sets / "sensors", mean="auto", std="auto"), NO_VAL)
        for name, channels in alone.items():
            own = run(name, f"data.train={two_sets / name / 'train.beton'}", f"data.val={two_sets / name / 'val.beton'}",
                      f"data.channels={channels}", "data.mean=auto", "data.std=auto")
            shared = mixed["datasets"][name]["subsets"]
            assert list(shared) == list(own["subsets"])  # the same subsets, named alike
            gains[name].append(np.mean([shared[s]["accuracy"] - own["subsets"][s]["accuracy"] for s in shared]))
    assert np.mean(list(gains.values())) > 0 and all(np.mean(g) > -0.05 for g in gains.values()), gains


@pytest.mark.slow  # imports Ray (which subclasses subprocess.Popen, which the in-process tier replaces)
def test_a_sweep_takes_a_mixture_with_relative_paths_and_its_per_dataset_metrics(tmp_path, monkeypatch):
    from dynconv.launch.sweep import sweep_spec as resolve_spec
    from dynconv.sweeps.spec import SweepOptions

    for name in ("rgb", "sensors"):
        for split in ("train", "val"):
            (tmp_path / name / f"{split}.beton").parent.mkdir(exist_ok=True)
            (tmp_path / name / f"{split}.beton").touch()
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("dropout.kind: {grid: [none, uniform_subsets]}\n")
    args = [CONFIG, space, [_mixture("rgb", "sensors"), NO_VAL, "eval.subsets=R-G,R,IR"]]
    spec = resolve_spec(tmp_path / "out", *args, SweepOptions(metric="acc_sensors:IR"))
    entries = spec.base["data"]["train"]
    assert [e["path"] for e in entries] == [str(tmp_path / "rgb" / "train.beton"), str(tmp_path / "sensors" / "train.beton")]
    assert entries[1]["val"] == str(tmp_path / "sensors" / "val.beton")  # trials run elsewhere: absolute paths
    with pytest.raises(DynconvError, match="acc_rgb:RG, acc_rgb:R, acc_sensors:R-G, acc_sensors:R, acc_sensors:IR"):
        resolve_spec(tmp_path / "out", *args, SweepOptions(metric="acc_IR"))
    (tmp_path / "sensors" / "val.beton").unlink()
    with pytest.raises(DynconvError, match="data.train\\[sensors\\].val sensors/val.beton does not exist"):
        resolve_spec(tmp_path / "out2", *args, SweepOptions())


@pytest.mark.slow
def test_a_mixture_over_two_processes_trains_what_one_process_does(two_sets, tmp_path):
    """DDP over a mixture: every process draws the same dataset and subset at each step (the interleaving and
    dropout depend on (seed, epoch, step) only), so 2 processes x 8 images see what 1 process x 16 sees
    (GroupNorm: no batch statistics). The learning rate is ~0, so each epoch's loss is the initial model's over
    that epoch's (batch, subset) sequence: equal to 3 decimals when the draws agree. (At the demo's rate the two
    runs drift apart from the order of floating-point sums — 1.445 vs 1.424 after 2 epochs, chaotically — so
    it cannot tell a wrong draw from rounding; that gradients average as one batch is test_ddp's.)"""
    import subprocess
    import sys

    from helpers import epoch_losses

    folders = (f"data.train=[{{name: rgb, path: {two_sets / 'rgb' / 'train'}, val: {two_sets / 'rgb' / 'val'}, "
               f"channels: RGB}}, {{name: sensors, path: {two_sets / 'sensors' / 'train'}, "
               f"val: {two_sets / 'sensors' / 'val'}, channels: {SENSORS}}}]")
    out = {}
    for name, nproc in (("single", 1), ("ddp", 2)):
        proc = subprocess.run(
            [sys.executable, "-m", "dynconv.launch", "train", "--nproc", str(nproc), "--config", CONFIG, folders, NO_VAL,
             "data.image_size=24", "model.num_classes=4", f"model.width={TEST_WIDTH}", "train.epochs=2",
             "train.batch_size=16", "model.norm=group", "train.grad_clip=1.0", "data.augment.enabled=false",
             "train.lr=1e-6", "data.num_workers=0", "tracking.enabled=false", f"run.dir={tmp_path / name}"],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = proc.stdout
    single, ddp = epoch_losses(out["single"]), epoch_losses(out["ddp"])
    assert len(single) == len(ddp) == 2 and all(abs(a - b) < 0.0015 for a, b in zip(single, ddp)), (single, ddp)
    assert "data-parallel over 2 processes (gloo)" in out["ddp"] and "val_acc:sensors" in out["ddp"]
