"""Subset-aware normalisation: recalibrate, switchable, group."""
import copy
import json
import logging
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dynconv.calibration import calibrate_from_source
from dynconv.channel_select import forward_subset
from dynconv.channels import all_subsets
from dynconv.data.loaders import DataSource
from dynconv.data.mixture import MixturePart, MixtureSource
from dynconv.layers import SubsetBatchNorm2d, calibrate
from dynconv.layers.subset_norm import calibrate_in_one_pass, subset_norms
from dynconv.models import create_model
from helpers import run_cli, train_args

SUBSETS = all_subsets(3)


def _skewed_batches(seed: int, n: int = 4, batch: int = 8):
    """Inputs whose channels have very different scales, so subsets give different activations."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.2, 1.0, 4.0]).view(1, 3, 1, 1)
    return [torch.randn(batch, 3, 24, 24, generator=g) * scale + 1 for _ in range(n)]


def _calibrated(norm="recalibrate", seed=0, mode="slice"):
    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode=mode, norm=norm)
    data = _skewed_batches(seed)
    calibrate(model, lambda s: data, SUBSETS, forward_subset)
    return model, data


def test_per_subset_statistics_differ_and_are_selected():
    model, data = _calibrated()
    bn = model.bn1
    assert isinstance(bn, SubsetBatchNorm2d) and bool(bn.subset_seen.all())
    means = bn.subset_mean
    assert not torch.allclose(means[SUBSETS.index((0,))], means[SUBSETS.index((2,))], rtol=0.1)
    # evaluating subset G uses G's statistics: same output as a plain BN loaded with them
    model.eval()
    k = SUBSETS.index((1,))
    x = data[0][:, [1]]
    stem_out = model.conv1(x, (1,))
    plain = nn.BatchNorm2d(64).eval()
    plain.load_state_dict({"weight": bn.weight, "bias": bn.bias, "running_mean": bn.subset_mean[k],
                           "running_var": bn.subset_var[k], "num_batches_tracked": torch.tensor(0)})
    model.set_active_subset((1,))
    with torch.no_grad():
        torch.testing.assert_close(bn(stem_out), plain(stem_out))


def test_recalibrated_statistics_match_the_data():
    """For the first norm layer the re-estimated statistics are exactly those of the stem's outputs."""
    model, data = _calibrated()
    with torch.no_grad():
        out = torch.cat([model.conv1(x[:, [0, 2]], (0, 2)) for x in data])
    k = SUBSETS.index((0, 2))
    torch.testing.assert_close(model.bn1.subset_mean[k], out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.bn1.subset_var[k], out.var((0, 2, 3)), rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_keeps_statistics(tmp_path):
    model, data = _calibrated()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    fresh = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="recalibrate")
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    model.eval(), fresh.eval()
    with torch.no_grad():
        for s in SUBSETS:
            torch.testing.assert_close(forward_subset(model, data[1], s), forward_subset(fresh, data[1], s))
    torch.testing.assert_close(fresh.layer4[1].bn2.subset_var, model.layer4[1].bn2.subset_var)


def test_calibration_is_deterministic_given_data():
    a, _ = _calibrated(seed=3)
    b, _ = _calibrated(seed=3)
    c, _ = _calibrated(seed=4)
    assert torch.equal(a.layer2[0].bn1.subset_mean, b.layer2[0].bn1.subset_mean)
    assert not torch.equal(a.layer2[0].bn1.subset_mean, c.layer2[0].bn1.subset_mean)


def _reference_statistics(model, pools):
    """Each SubsetBatchNorm2d's per-subset statistics computed plainly: the model in training mode (each batch
    normalised with its own statistics, as calibration does), every layer's inputs recorded, then the mean and
    unbiased variance over all of a subset's images. ``pools(subset)``: that subset's input batches."""
    ref = copy.deepcopy(model).train()
    norms = [m for m in ref.modules() if isinstance(m, SubsetBatchNorm2d)]
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, i=i: seen.setdefault(i, []).append(args[0]))
             for i, m in enumerate(norms)]
    out = {}
    with torch.no_grad():
        for s in SUBSETS:
            seen.clear()
            for x in pools(s):
                forward_subset(ref, x, s)
            for i, xs in seen.items():
                cat = torch.cat(xs).double()
                out[i, s] = cat.mean((0, 2, 3)), cat.var((0, 2, 3))
    for h in hooks:
        h.remove()
    return out


def _assert_statistics(model, expected, subsets=SUBSETS):
    norms = [m for m in model.modules() if isinstance(m, SubsetBatchNorm2d)]
    assert len(norms) > 10
    for (i, s), (mean, var) in expected.items():
        if s not in subsets:
            continue
        k = SUBSETS.index(s)
        assert bool(norms[i].subset_seen[k])
        torch.testing.assert_close(norms[i].subset_mean[k].double(), mean, rtol=1e-4, atol=1e-5, msg=f"{i} {s}")
        torch.testing.assert_close(norms[i].subset_var[k].double(), var, rtol=1e-4, atol=1e-5, msg=f"{i} {s}")


def test_one_pass_calibration_equals_the_plain_computation_and_the_per_subset_path():
    """Batches outer, subsets inner (each batch read once): every layer's statistics for every subset are the
    mean and variance of its inputs over the calibration images, as subset after subset gives them."""
    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="recalibrate", width=8)
    data = _skewed_batches(5)
    expected = _reference_statistics(model, lambda s: data)
    one_pass = copy.deepcopy(model)
    calibrate_in_one_pass(one_pass, ((x, SUBSETS) for x in data), forward_subset)
    _assert_statistics(one_pass, expected)
    per_subset = copy.deepcopy(model)
    calibrate(per_subset, lambda s: data, SUBSETS, forward_subset)
    for a, b in zip(subset_norms(one_pass), subset_norms(per_subset)):
        torch.testing.assert_close(a.subset_mean, b.subset_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.subset_var, b.subset_var, rtol=1e-5, atol=1e-6)
    assert all(not m.calibrating and not m._calib for m in subset_norms(one_pass))
    assert one_pass.training  # the model's mode is put back


def _mixture(n_batches=3, batch=6):
    """Two in-memory datasets over the vocabulary (0, 1, 2): A has all three channels (channels-last, as the
    CPU loader gives them), B only channel 1."""
    g = torch.Generator().manual_seed(1)
    make = lambda c: [(torch.randint(0, 256, (batch, c, 24, 24), generator=g, dtype=torch.uint8)  # noqa: E731
                       .contiguous(memory_format=torch.channels_last), torch.zeros(batch, dtype=torch.long))
                      for _ in range(n_batches)]
    a, b = DataSource(make(3), ["x"], n_batches * batch), DataSource(make(1), ["x"], n_batches * batch)
    norm = lambda imgs: (imgs.float() / 255 - 0.4) / 0.3  # noqa: E731
    parts = [MixturePart("a", "RGB", (0, 1, 2), 3, norm, norm), MixturePart("b", "G", (1,), 3, norm, norm)]
    return MixtureSource([a, b], ["a", "b"]), parts


def test_calibration_from_a_mixture_pools_the_datasets_that_have_the_subset(caplog):
    """A subset's statistics pool the batches of every dataset that has all its channels (G: both datasets;
    the others: A only), from the first ``num_batches`` batches of each; with ``progress`` the main process
    says when the long calibration starts and ends."""
    source, parts = _mixture()
    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="recalibrate", width=8)
    batches = [[p.model_transform(x) for x, _ in src.batches[:2]] for p, src in zip(parts, source.sources)]
    expected = _reference_statistics(model, lambda s: batches[0] + (batches[1] if set(s) <= {1} else []))
    with caplog.at_level(logging.INFO, logger="dynconv"):
        n = calibrate_from_source(model, source, None, SUBSETS, 2, parts, progress=True)
    assert n == 12
    _assert_statistics(model, expected)
    lines = [r.getMessage() for r in caplog.records if r.name == "dynconv"]
    assert len(lines) == 2 and lines[0].startswith("calibrating") and lines[1].startswith("calibrated 7 subsets")
    assert all(len(line) < 100 for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dynconv"):
        calibrate_from_source(model, source, None, [(0, 1, 2)], 1, parts)  # per-epoch calibration: quiet
    assert not [r for r in caplog.records if r.name == "dynconv"]


def test_switchable_updates_only_the_active_subset_and_falls_back_with_warning():
    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="switchable",
                         switchable_stages=1)
    assert isinstance(model.layer1[0].bn1, SubsetBatchNorm2d)
    assert type(model.layer2[0].bn1) is nn.BatchNorm2d  # beyond switchable_stages: shared
    x = _skewed_batches(0)[0]
    model.train()
    for s in [(0, 1, 2), (0,)]:
        forward_subset(model, x, s)
    seen = model.bn1.subset_seen
    assert seen[SUBSETS.index((0, 1, 2))] and seen[SUBSETS.index((0,))] and int(seen.sum()) == 2
    model.eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out_b = forward_subset(model, x, (2,))
    assert any("no normalisation statistics for channel subset (2,)" in str(w.message) for w in caught)
    # nearest seen subset of (2,) by overlap is RGB: same output as forcing RGB's statistics
    k_rgb = SUBSETS.index((0, 1, 2))
    for m in model.modules():
        if isinstance(m, SubsetBatchNorm2d):
            m.subset_seen[SUBSETS.index((2,))] = True
            m.subset_mean[SUBSETS.index((2,))] = m.subset_mean[k_rgb]
            m.subset_var[SUBSETS.index((2,))] = m.subset_var[k_rgb]
    torch.testing.assert_close(forward_subset(model, x, (2,)), out_b)


def test_group_norm_replaces_batch_norm():
    model = create_model("ran2", num_classes=3, norm="group")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="recalibrate")
    data = [x[rank::world] for x in _skewed_batches(7)]  # each rank sees its share of every batch
    calibrate(model, lambda s: data, SUBSETS, forward_subset)
    if rank == 0:
        torch.save({k: v for k, v in model.state_dict().items() if "subset_" in k}, out)
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_calibration_matches_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'rdzv'}", str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    single = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice", norm="recalibrate")
    data = _skewed_batches(7)
    calibrate(single, lambda s: data, SUBSETS, forward_subset)
    ref = single.state_dict()
    assert len(ddp) > 20
    for k, v in ddp.items():
        torch.testing.assert_close(v, ref[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_cli_recalibrate_train_calibrate_and_rgb_gap(tiny_data, tmp_path, capsys):
    base = tmp_path / "shared"
    assert run_cli(*train_args(tiny_data, base, "tracking.enabled=false", "train.epochs=4")) == 0
    recal = tmp_path / "recal"
    assert run_cli(*train_args(tiny_data, recal, "tracking.enabled=false", "train.epochs=4",
                                "model.norm=recalibrate")) == 0
    ckpt = torch.load(recal / "model.pt", weights_only=True)
    assert ckpt["dynconv"]["model_kwargs"]["norm"] == "recalibrate"
    assert bool(ckpt["model"]["bn1.subset_seen"].all())
    # calibrate a shared-norm checkpoint after the fact; same seed -> identical file contents
    for name in ("a.pt", "b.pt"):
        assert run_cli("calibrate", base / "model.pt", "--data", tiny_data / "train.beton", "--batches", "3",
                       "--out", tmp_path / name, "--workers", "1") == 0
    a, b = (torch.load(tmp_path / n, weights_only=True) for n in ("a.pt", "b.pt"))
    assert a["dynconv"]["model_kwargs"]["norm"] == "recalibrate"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    capsys.readouterr()
    out = tmp_path / "gap.json"
    assert run_cli("eval", tmp_path / "a.pt", "--data", tiny_data / "val", "--reference", base / "eval.json",
                   "--json", out) == 0
    report = json.loads(out.read_text())
    ref = json.loads((base / "eval.json").read_text())["subsets"]["RGB"]["accuracy"]
    assert report["summary"]["rgb_gap"] == pytest.approx(ref - report["subsets"]["RGB"]["accuracy"])
    assert "rgb_gap" in capsys.readouterr().out


@pytest.mark.slow
def test_every_norm_mode_learns_in_the_small_data_regime(textures_small, tmp_path):
    """360 training images of the harder set: no norm mode may fall to chance (switchable did, with
    per-subset running statistics that ~10 updates each left near their initial values), and the subset-aware
    ones beat shared BatchNorm on mean subset accuracy. The last epoch's logged subset accuracies are the
    final evaluation's."""
    from mlflow.tracking import MlflowClient

    from helpers import CONFIG

    summary = {}
    for norm in ("shared", "recalibrate", "switchable", "group"):
        run = tmp_path / norm
        assert run_cli("train", "--config", CONFIG, f"data.train={textures_small / 'train.beton'}",
                       f"data.val={textures_small / 'val.beton'}", "model.num_classes=6", "data.image_size=32",
                       "train.epochs=8", "train.batch_size=32", "train.lr=0.05", f"model.norm={norm}",
                       "data.num_workers=1", "eval.every_epoch=true", f"run.dir={run}",
                       # width 32: GroupNorm reaches 38-41% mean subset accuracy (64: 50%, in 3x the time; 16:
                       # 24%, under the bar); the subset-aware modes 50-53% against shared's 39-42%
                       "model.width=32",
                       # GroupNorm has no batch statistics to damp the first steps: at this rate it diverges
                       # to chance without clipping (measured: mean subset accuracy 16.7% -> 49.6%)
                       *(["train.grad_clip=1.0"] if norm == "group" else [])) == 0
        report = json.loads((run / "eval.json").read_text())
        summary[norm] = report["summary"]["mean_subset_acc"]
        # chance is 1/6: a mode that collapses (switchable's stale statistics did: mean 19.9%) fails here; shared
        # BatchNorm's worst subset sits near chance by its nature, the subset-aware modes' may not
        assert summary[norm] > 1 / 6 + 0.1, (norm, report["summary"])
        if norm in ("recalibrate", "switchable"):
            assert report["summary"]["worst_subset_acc"] > 1 / 6 + 0.1, (norm, report["summary"])
        info = json.loads((run / "mlflow_run.json").read_text())
        client = MlflowClient(info["tracking_uri"])
        for subset, row in report["subsets"].items():
            last = client.get_metric_history(info["run_id"], f"curves/val_acc_{subset}")[-1]
            assert last.step == 8 and last.value == pytest.approx(row["accuracy"], abs=1e-12), (norm, subset)
    print(summary)
    assert summary["recalibrate"] > summary["shared"] and summary["switchable"] > summary["shared"], summary
