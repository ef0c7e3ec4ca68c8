"""The one training loop under its strategy interface: gradient accumulation, non-finite micro-batches,
progressive resizing, a per-step one-cycle schedule that survives a mid-epoch stop, torch.compile, and
the config checks of the new train.* keys. Tiny in-memory models and batches (fast) unless marked slow."""
import re

import pytest
import torch
from torch import nn

from dynconv.data.loaders import DataSource
from dynconv.train import Hook, fit
from dynconv.train import TrainingPreempted
from dynconv.train.loop import train_one_epoch
from dynconv.train.optim import build_scheduler
from dynconv.train.resize import resolution_at
from dynconv.train.strategies import build_strategy
from helpers import CPU, Tiny, epoch_losses, fit_spec, make_batches, run_cli, stop_after, train_args


def _setup(model, k: int = 1, lr: float = 0.1, compile: bool = False):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    strategy = build_strategy("single", CPU, grad_accum_steps=k)
    strategy.setup(model, opt, compile=compile)
    return strategy, opt


def test_two_micro_batches_of_4_give_the_update_of_one_batch_of_8(tmp_path):
    data = make_batches(2, batch=4)
    whole = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))]
    results = []
    for k, batches in ((1, whole), (2, data + make_batches(1, seed=9))):  # k=2: the third batch is a rest, unused
        torch.manual_seed(0)
        model = Tiny(norm=False)  # no BatchNorm: per-sample maths, so accumulation is exact up to rounding
        strategy, _ = _setup(model, k=k)
        metrics = train_one_epoch(strategy, DataSource(batches, None, 8, "memory"), fit_spec(tmp_path, 1), 1)
        results.append((dict(model.state_dict()), metrics, len(model.sizes)))
    (a, ma, na), (b, mb, nb) = results
    assert (na, nb) == (1, 2)
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], abs=1e-6)


def test_non_finite_micro_batch_drops_the_whole_step(tmp_path):
    torch.manual_seed(0)
    model = Tiny(norm=False)
    strategy, _ = _setup(model, k=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    spec = fit_spec(tmp_path, 1, max_bad_steps=1)
    spec.train_transform = lambda x, e, s: x.float() / 255 * (float("nan") if s == 1 else 1.0)
    train_one_epoch(strategy, DataSource(make_batches(2), None, 8, "memory"), spec, 1)  # its only step
    assert spec.bad_steps == 1 and len(model.sizes) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # micro-batch 0 discarded too


def test_an_epoch_reports_how_long_it_waited_for_its_loader(tmp_path):
    """data_wait_s: the loop's time blocked on the loader (here 0.2 s per batch), not its compute."""
    import time

    class Slow(list):
        def __iter__(self):
            for batch in list.__iter__(self):
                time.sleep(0.2)
                yield batch

    torch.manual_seed(0)
    strategy, _ = _setup(Tiny())
    fast = train_one_epoch(strategy, DataSource(make_batches(3), None, 24, "memory"), fit_spec(tmp_path, 1), 1)
    slow = train_one_epoch(strategy, DataSource(Slow(make_batches(3)), None, 24, "memory"), fit_spec(tmp_path, 1), 1)
    assert 0.6 <= slow["data_wait_s"] < 0.6 + 1.0 and fast["data_wait_s"] < 0.15, (fast, slow)


def test_resolution_schedule():
    assert [resolution_at(e, 16, 32, 2) for e in (1, 2, 3, 4)] == [16, 24, 32, 32]
    assert [resolution_at(e, 160, 224, 2) for e in (1, 2, 3)] == [160, 192, 224]  # multiples of 32 (FFCV)
    assert resolution_at(1, 16, 32, 0) == 32


def test_progressive_resizing_trains_at_the_scheduled_resolution(tmp_path):
    class Record(Hook):
        def __init__(self):
            self.res = []

        def on_epoch_end(self, epoch, metrics, checkpoint):
            self.res.append(metrics["train_res"])

    torch.manual_seed(0)
    model, hook = Tiny(), Record()
    strategy, opt = _setup(model)
    spec = fit_spec(tmp_path, 3, resolution=lambda e: resolution_at(e, 16, 32, 2), hooks=[hook])
    fit(strategy, DataSource(make_batches(2, size=32), None, 8, "memory"), None, build_scheduler(opt, "constant", 3), spec)
    assert model.sizes == [16, 16, 24, 24, 32, 32] and hook.res == [16, 24, 32]


def test_hooks_are_called_by_role_whatever_order_they_are_given_in(tmp_path):
    """At every event: algorithms (change the model), evaluators (make the result), loggers (record it), then
    callbacks (may stop training); within a role, in the order given. A plain Hook is a callback."""
    from dynconv.train import Algorithm, Callback, Evaluator, Logger

    calls = []

    def role(base, name):
        class Recorder(base):
            def before_validation(self, module, epoch):
                calls.append(("before_validation", name))

            def on_epoch_end(self, epoch, metrics, checkpoint):
                calls.append(("on_epoch_end", name))

            def on_fit_end(self, result):
                calls.append(("on_fit_end", name))
        return Recorder()

    hooks = [role(Hook, "plain"), role(Callback, "callback"), role(Logger, "logger"), role(Evaluator, "evaluator"),
             role(Algorithm, "algorithm"), role(Algorithm, "algorithm2")]
    torch.manual_seed(0)
    strategy, opt = _setup(Tiny())
    fit(strategy, DataSource(make_batches(2), None, 8, "memory"), None, build_scheduler(opt, "constant", 1),
        fit_spec(tmp_path, 1, hooks=hooks))
    order = ["algorithm", "algorithm2", "evaluator", "logger", "plain", "callback"]
    for event in ("before_validation", "on_epoch_end", "on_fit_end"):
        assert [n for e, n in calls if e == event] == order


def _onecycle_run(tmp_path, stop_at: int | None = None, resume_from=None) -> list[float]:
    """LRs of every optimiser step of 2 epochs x 3 steps; optionally stopped before poll ``stop_at``."""
    torch.manual_seed(0)
    model = Tiny()
    strategy, opt = _setup(model)
    scheduler = build_scheduler(opt, "onecycle", 2, steps_per_epoch=3, pct_start=0.3)
    lrs = []
    opt.register_step_pre_hook(lambda o, *_: lrs.append(o.param_groups[0]["lr"]))
    polls = iter(range(100))
    spec = fit_spec(tmp_path, 2, every_steps=1, hooks=[stop_after(polls, stop_at)] if stop_at is not None else [])
    start, resume = 0, None
    if resume_from is not None:
        state = strategy.load(resume_from)
        scheduler.load_state_dict(state["scheduler"])
        start, resume = state["epoch"], {k: state[k] for k in ("step", "partial") if k in state}
    fit(strategy, DataSource(make_batches(3), None, 12, "memory"), None, scheduler, spec, start_epoch=start, resume=resume)
    return lrs


def test_onecycle_is_stepped_per_step_like_torch_and_resumes_mid_epoch(tmp_path):
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=6, pct_start=0.3, cycle_momentum=False)
    expected = []
    for _ in range(6):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert _onecycle_run(tmp_path / "a") == pytest.approx(expected, rel=1e-12)

    with pytest.raises(TrainingPreempted) as stopped:
        _onecycle_run(tmp_path / "b", stop_at=4)  # polls 0-2: epoch 1; poll 4 = epoch 2 step 1
    assert (stopped.value.epoch, stopped.value.step) == (2, 1)
    first = expected[:4]
    rest = _onecycle_run(tmp_path / "b", resume_from=stopped.value.checkpoint)
    assert first + rest == pytest.approx(expected, rel=1e-12)


@pytest.mark.slow
def test_compile_trains_a_step_and_keeps_plain_weight_names(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    plain_keys = list(model.state_dict())
    strategy, opt = _setup(model, compile=True)
    final = fit(strategy, DataSource(make_batches(1), None, 4, "memory"), None, build_scheduler(opt, "constant", 1),
                fit_spec(tmp_path, 1))
    saved = torch.load(final.final_checkpoint, weights_only=True)["model"]
    assert list(saved) == plain_keys and all(torch.isfinite(v).all() for v in saved.values())


# ---- config checks of the new keys: one line, before any data is read ------------------------------------

@pytest.mark.parametrize("extra, env, fragment", [
    (["train.strategy=single"], {"WORLD_SIZE": "2"}, "train.strategy=single but 2 processes"),
    (["deepspeed.zero_stage=3"], {}, "deepspeed.zero_stage is set but train.strategy=auto"),
    (["train.res_start=16", "train.res_end=40"], {}, "must not exceed data.image_size=32"),
    (["train.res_ramp_epochs=3"], {}, "need train.res_start"),
    (["train.batch_size=30", "train.grad_accum_steps=4"], {}, "divisible by processes x train.grad_accum_steps"),
    (["train.scheduler=onecycle", "train.warmup_epochs=1"], {}, "has its own warm-up"),
    (["train.inplace_distill=true"], {}, "set dropout.kind=sandwich"),
    (["dropout.kind=sandwich", "dropout.curriculum=linear"], {}, "sees the full input on every step"),
    (["dropout.kind=sandwich", "train.inplace_distill=true", "train.teacher=x.pt"], {}, "choose one"),
    (["dropout.kind=sandwich", "dropout.n_subsets=1"], {}, "dropout.n_subsets"),
    (["model.pretrained=nowhere.pt"], {}, "model.pretrained=nowhere.pt: no such file"),
    (["model.name=ran2", "model.pretrained=torchvision"], {}, "model.pretrained starts a ResNet"),
])
def test_bad_training_keys_are_one_line_errors(tiny_data, tmp_path, capsys, monkeypatch, extra, env, fragment):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert run_cli(*train_args(tiny_data, tmp_path / "run", "tracking.enabled=false", *extra)) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"dynconv: error: .*\n", err) and fragment in err, err


@pytest.mark.slow
def test_grad_accumulation_2x16_matches_1x32(tiny_data, tmp_path, capsys):
    """Same global batches, one channel subset per optimiser step: only BatchNorm's batch statistics
    (over 16 instead of 32 images) differ, so the loss curves are close, not equal (the same tolerance as
    DDP against one process in test_ddp.py; without BatchNorm the update is exact, see above)."""
    curves = {}
    for k in (1, 2):
        capsys.readouterr()
        assert run_cli(*train_args(tiny_data, tmp_path / f"k{k}", "train.epochs=2", "data.augment.enabled=false",
                                    "tracking.enabled=false", "data.num_workers=0", f"train.grad_accum_steps={k}")) == 0
        out = capsys.readouterr().out
        curves[k] = epoch_losses(out)
    assert "16 images per process per micro-step, 2 micro-step(s) per optimiser step" in out
    assert len(curves[1]) == len(curves[2]) == 2
    assert all(abs(a - b) < 0.15 for a, b in zip(curves[1], curves[2])), curves


def test_a_saved_config_yaml_reloads_without_deepspeed_settings(tmp_path):
    """run.dir/config.yaml spells out every key, the deepspeed section's unset ones as null: not 'set'."""
    from dynconv.launch.config import dump_yaml, load_config
    from dynconv.launch.training import _deepspeed_options

    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(load_config(None, ["train.epochs=2"])))
    assert _deepspeed_options(load_config(saved), "single") is None
    with pytest.raises(Exception, match="deepspeed.zero_stage is set"):
        _deepspeed_options(load_config(saved, ["deepspeed.zero_stage=1"]), "single")


def test_weight_ema_follows_the_formula_and_round_trips():
    from dynconv.train.ema import WeightEMA

    live = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(live, decay=0.9)
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in live.parameters():
            p.add_(1.0)
        live[1].num_batches_tracked += 5
    ema.update(live)
    d = min(0.9, 2 / 11)  # warm-up: (1 + n) / (10 + n) after the first update
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, d * start[k] + (1 - d) * live.state_dict()[k]), k
        else:
            assert torch.equal(v, live.state_dict()[k]), k  # integer buffers are copied
    again = WeightEMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.9)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 1 and all(torch.equal(a, b) for a, b in zip(again.module.state_dict().values(),
                                                                        ema.module.state_dict().values()))


def test_distillation_loss_is_the_soft_target_kl(tmp_path):
    from dynconv.train.loop import distillation

    student, teacher = torch.randn(5, 3), torch.randn(5, 3)
    t = 2.0
    p, log_q = torch.softmax(teacher / t, 1), torch.log_softmax(student / t, 1)
    expected = (p * (p.log() - log_q)).sum(1).mean() * t * t
    assert distillation(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)

    class Fixed(nn.Module):  # a teacher that always answers the same
        def forward(self, x, channels=None):
            return torch.tensor([[4.0, -4.0]]).expand(x.shape[0], 2)

    torch.manual_seed(0)
    model = Tiny(norm=False)
    strategy, _ = _setup(model, lr=0.0)  # no update: the loss is the loss of the initial model
    batches = make_batches(2)
    spec = fit_spec(tmp_path, 1, teacher=Fixed(), distill_alpha=1.0, distill_temperature=1.0)
    metrics = train_one_epoch(strategy, DataSource(batches, None, 8, "memory"), spec, 1)
    with torch.no_grad():
        logits = torch.cat([model(x.float() / 255) for x, _ in batches])
    assert metrics["train_loss"] == pytest.approx(distillation(logits, Fixed()(logits), 1.0).item(), rel=1e-5)


def _zero_filled_passes(x: torch.Tensor, passes) -> torch.Tensor:
    from dynconv.channel_select import select_channels

    return torch.cat([select_channels(x, s, adaptive=False) for s, _ in passes])


def test_a_sandwich_step_is_one_step_on_its_passes_side_by_side(tmp_path):
    """dropout.kind=sandwich: the passes' gradients, weighted equally, are one batch of the passes side by side
    (no BatchNorm: exact up to rounding); the epoch counts images x passes as its compute."""
    from dynconv.dropout import ChannelDropout

    sandwich = ChannelDropout("sandwich", 3, seed=3, n_subsets=4)
    batches = make_batches(3, batch=4)
    stacked = [(_zero_filled_passes(x.float() / 255, sandwich.passes(1, step)), y.repeat(4))
               for step, (x, y) in enumerate(batches)]
    results = []
    for data, dropout, transform in ((batches, sandwich, None), (stacked, ChannelDropout("none", 3), lambda x, e, s: x)):
        torch.manual_seed(0)
        model = Tiny(norm=False)
        strategy, _ = _setup(model)
        spec = fit_spec(tmp_path, 1, dropout=dropout, subset_macs={s: 10.0 for s in sandwich.subsets})
        if transform is not None:
            spec.train_transform = transform
        results.append((model.state_dict(), train_one_epoch(strategy, DataSource(data, None, 12, "memory"), spec, 1)))
    (a, ma), (b, mb) = results
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-5)
    assert (ma["image_passes"], mb["image_passes"]) == (48, 48)
    assert (ma["train_macs"], mb["train_macs"]) == (480, 480)


def test_in_place_distillation_teaches_the_subsets_from_the_full_inputs_detached_predictions(tmp_path):
    """train.inplace_distill: the full input learns from the labels, each other pass from the full input's
    predictions of the same step (no gradient through them), weighted as the sandwich weighs its passes."""
    from dynconv.channel_select import select_channels
    from dynconv.dropout import ChannelDropout
    from dynconv.train.loop import distillation

    dropout = ChannelDropout("sandwich", 3, seed=5, n_subsets=3, full_weight=2.0)
    (x, y), = make_batches(1, batch=6)
    torch.manual_seed(0)
    model = Tiny(norm=False)
    expected = Tiny(norm=False)
    expected.load_state_dict(model.state_dict())
    passes = dropout.passes(1, 0)
    assert [w for _, w in passes] == pytest.approx([0.5, 0.25, 0.25])
    full = expected(x.float() / 255)
    loss = passes[0][1] * nn.functional.cross_entropy(full, y) + sum(
        w * distillation(expected(select_channels(x.float() / 255, s, adaptive=False)), full.detach(), 3.0)
        for s, w in passes[1:])
    loss.backward()
    strategy, _ = _setup(model, lr=0.1)
    spec = fit_spec(tmp_path, 1, dropout=dropout, inplace_distill=True, inplace_temperature=3.0)
    metrics = train_one_epoch(strategy, DataSource([(x, y)], None, 6, "memory"), spec, 1)
    assert metrics["train_loss"] == pytest.approx(loss.item(), rel=1e-5)
    for (name, p), q in zip(expected.named_parameters(), model.parameters()):  # SGD, momentum 0.9: first step = -lr*g
        assert torch.allclose(p.detach() - 0.1 * p.grad, q.detach(), atol=1e-6), name


def test_a_sandwich_run_stopped_mid_epoch_resumes_bitwise(tmp_path):
    """The sandwich's draws depend on (seed, epoch, step) only: stopped after 3 steps and resumed, the weights
    are bitwise those of an uninterrupted run (BatchNorm and in-place distillation included)."""
    from dynconv.dropout import ChannelDropout
    from dynconv.train.optim import build_scheduler

    def run(run_dir, hooks=(), resume_from=None):
        torch.manual_seed(0)
        model = Tiny()
        strategy, opt = _setup(model)
        scheduler = build_scheduler(opt, "cosine", 2, 0, 1, 0.1, 4, 0.3)
        spec = fit_spec(run_dir, 2, dropout=ChannelDropout("sandwich", 3, seed=1, n_subsets=3), hooks=list(hooks),
                        inplace_distill=True, every_steps=1)
        start, state = 0, None
        if resume_from is not None:
            state = strategy.load(resume_from)
            scheduler.load_state_dict(state["scheduler"])
            start = state["epoch"]
        fit(strategy, DataSource(make_batches(4), None, 16, "memory"), None, scheduler, spec, start_epoch=start,
            resume=state)
        return model.state_dict()

    reference = run(tmp_path / "a")
    with pytest.raises(TrainingPreempted) as stopped:
        run(tmp_path / "b", hooks=[stop_after(iter(range(100)), 3)])
    resumed = run(tmp_path / "b", resume_from=stopped.value.checkpoint)
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_run_starts_from_pretrained_weights_in_torchvisions_format(tiny_data, tmp_path, capsys):
    """model.pretrained=FILE: a plain resnet18's state dict (torchvision's names) starts a slice-stem dynamic
    ResNet: its backbone and first filters are the file's (checked after an epoch at a vanishing rate), the head
    of other classes is new; the run says so."""
    from dynconv.models import create_model
    from helpers import TEST_WIDTH

    torch.manual_seed(1)
    source = create_model("resnet18", num_classes=7, width=TEST_WIDTH).state_dict()  # 7 classes: the run has 4
    torch.save(source, tmp_path / "pretrained.pt")
    assert run_cli(*train_args(tiny_data, tmp_path / "run", "tracking.enabled=false", "train.epochs=1",
                               "train.lr=1e-9", "train.warmup_epochs=0", "model.stem_mode=slice",
                               f"model.pretrained={tmp_path / 'pretrained.pt'}")) == 0
    out = capsys.readouterr()
    assert "started from pretrained weights" in out.out + out.err
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["model"]
    for key in ("conv1.weight", "layer2.0.conv1.weight", "layer4.1.conv2.weight"):
        assert torch.allclose(trained[key], source[key], atol=1e-6), key
    assert trained["fc.weight"].shape == (4, source["fc.weight"].shape[1])


def _sandwich_resnet_epoch(tmp_path, precision: str = "fp32", channels_last: bool = False):
    """A dynamic ResNet18 (slice stem, per-subset recalibration, width 8) after one sandwich epoch of 3 steps."""
    from dynconv.dropout import ChannelDropout
    from dynconv.models import create_model

    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=2, stem_mode="slice", norm="recalibrate", width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    strategy = build_strategy("single", CPU, precision=precision, passes=4)
    strategy.setup(model, opt, channels_last=channels_last)
    spec = fit_spec(tmp_path, 1, dropout=ChannelDropout("sandwich", 3, seed=2, n_subsets=4), inplace_distill=True,
                    channels_last=channels_last)
    metrics = train_one_epoch(strategy, DataSource(make_batches(3, size=32, batch=8), None, 24, "memory"), spec, 1)
    return model.state_dict(), metrics


def test_a_sandwich_under_channels_last_and_bf16_trains_what_fp32_does(tmp_path):
    """The sandwich's passes (full input, a single channel, pairs; sliced stem, per-subset norms, in-place
    distillation) in channels_last give the NCHW weights up to rounding (one thread: the same reduction
    order), and under bf16 autocast a finite loss near fp32's, float32 weights that stay channels_last."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference, ref_metrics = _sandwich_resnet_epoch(tmp_path / "a")
        nhwc, nhwc_metrics = _sandwich_resnet_epoch(tmp_path / "b", channels_last=True)
        bf16, bf16_metrics = _sandwich_resnet_epoch(tmp_path / "c", precision="bf16", channels_last=True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.allclose(reference[k].float(), nhwc[k].float(), atol=1e-4) for k in reference)
    assert nhwc_metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"], rel=1e-4)
    assert bf16_metrics["image_passes"] == ref_metrics["image_passes"] == 24 * 4
    assert bf16_metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"], rel=0.15)
    assert all(v.dtype == reference[k].dtype and v.isfinite().all() for k, v in bf16.items() if v.is_floating_point())
    assert not torch.equal(bf16["conv1.weight"], reference["conv1.weight"])  # trained in bf16, not a copy
    assert bf16["layer1.0.conv1.weight"].is_contiguous(memory_format=torch.channels_last)


def test_a_sandwich_over_a_mixture_draws_each_datasets_passes_within_its_channels(tmp_path):
    """data.train as a list: each batch's sandwich is its own dataset's (full input first, then a single channel
    and distinct others, all within that dataset's channels), placed on the model's channel vocabulary."""
    from dynconv.data.mixture import MixturePart, MixtureSource
    from dynconv.dropout import ChannelDropout

    seen = []

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)

        def forward(self, x, channels=None):  # shown only the present channels
            assert x.shape[1] == len(channels)
            seen.append(tuple(channels))
            return self.fc(x.mean((1, 2, 3))[:, None])

    Recording.channel_adaptive = True
    to_float = lambda x, e, s: x.float() / 255  # noqa: E731
    parts = [MixturePart("rgb", "RGB", (0, 1, 2), 4, to_float, None, ChannelDropout("sandwich", 3, seed=1, n_subsets=3)),
             MixturePart("rgx", "R-G-X", (0, 1, 3), 4, to_float, None, ChannelDropout("sandwich", 3, seed=1, n_subsets=3))]
    source = MixtureSource([DataSource(make_batches(3, seed=s), None, 12, "memory") for s in (0, 1)],
                           ["rgb", "rgx"], seed=4)
    order = [k for _, _, k in source.epoch(1)]
    assert sorted(order) == [0, 0, 0, 1, 1, 1]
    model = Recording()
    strategy, _ = _setup(model)
    spec = fit_spec(tmp_path, 1, dropout=ChannelDropout("sandwich", 4, seed=1, n_subsets=3), parts=parts)
    metrics = train_one_epoch(strategy, source, spec, 1)
    assert metrics["image_passes"] == 24 * 3 and len(seen) == 6 * 3
    for step, k in enumerate(order):
        part, passes = parts[k], seen[3 * step:3 * step + 3]
        assert passes == [part.to_model(s) for s, _ in part.dropout.passes(1, step)]
        assert passes[0] == part.positions and len(passes[1]) == 1 and len(set(passes)) == 3
        assert all(set(p) <= set(part.positions) for p in passes)
