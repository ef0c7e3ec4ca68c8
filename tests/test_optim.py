import math

import pytest
import torch

from dynconv.errors import DynconvError
from dynconv.models import create_model
from dynconv.train.optim import build_optimizer, build_scheduler


def _lrs(name, epochs, **kw):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = build_scheduler(opt, name, epochs, **kw)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_with_and_without_warmup():
    cos = _lrs("cosine", 4)
    assert cos == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    warm = _lrs("cosine", 5, warmup_epochs=2)
    assert warm[:3] == pytest.approx([1 / 3, 2 / 3, 1.0]) and warm[3] < 1.0
    assert _lrs("step", 5, step_size=2, gamma=0.5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    assert _lrs("constant", 3) == [1.0, 1.0, 1.0]


def test_scheduler_state_round_trip():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    a = build_scheduler(opt, "cosine", 6, warmup_epochs=1)
    for _ in range(3):
        opt.step()
        a.step()
    opt2 = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    b = build_scheduler(opt2, "cosine", 6, warmup_epochs=1)
    b.load_state_dict(a.state_dict())
    opt2.step()
    b.step()
    opt.step()
    a.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])


def test_no_weight_decay_on_norm_and_bias():
    model = create_model("resnet18", num_classes=3)
    opt = build_optimizer(model, "sgd", 0.1, 5e-4)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])


def test_bad_schedules():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    with pytest.raises(DynconvError, match="choose one of"):
        build_scheduler(opt, "linear", 3)
    with pytest.raises(DynconvError, match="warmup_epochs=3 must be smaller"):
        build_scheduler(opt, "cosine", 3, warmup_epochs=3)


@pytest.mark.parametrize("total, pct", [(100, 0.3), (7, 0.3), (3, 0.25), (1, 0.3)])
def test_onecycle_matches_torch_onecycle(total, pct):
    """Epoch-free closed form of torch's OneCycleLR (cosine, two phases, div 25, final div 1e4), stepped per
    optimiser step (``per_step``), so its state in a checkpoint is one counter."""
    model = torch.nn.Linear(2, 2)
    ref_opt, opt = torch.optim.SGD(model.parameters(), lr=0.5), torch.optim.SGD(model.parameters(), lr=0.5)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.5, total_steps=total, pct_start=pct,
                                              cycle_momentum=False)
    ours = build_scheduler(opt, "onecycle", epochs=total, steps_per_epoch=1, pct_start=pct)
    assert ours.per_step and not build_scheduler(torch.optim.SGD(model.parameters(), lr=1.0), "cosine", 3).per_step
    for _ in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        ref_opt.step()
        opt.step()
        ref.step()
        ours.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_onecycle_cycles_momentum_like_torch(optimizer):
    """cycle_momentum as torch's OneCycleLR: momentum (Adam: beta1) from peak down to base while the rate rises,
    back up while it falls."""
    def make():
        model = torch.nn.Linear(2, 2)
        if optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        return torch.optim.AdamW(model.parameters(), lr=0.5, betas=(0.9, 0.999))
    key = (lambda g: g["momentum"]) if optimizer == "sgd" else (lambda g: g["betas"][0])
    ref_opt, opt = make(), make()
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.5, total_steps=20, pct_start=0.3,
                                              base_momentum=0.85, max_momentum=0.9)
    ours = build_scheduler(opt, "onecycle", epochs=20, steps_per_epoch=1, pct_start=0.3, momentum=(0.85, 0.9))
    seen = []
    for _ in range(20):
        assert key(opt.param_groups[0]) == pytest.approx(key(ref_opt.param_groups[0]), rel=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        seen.append(key(opt.param_groups[0]))
        ref_opt.step()
        opt.step()
        ref.step()
        ours.step()
    assert min(seen) == pytest.approx(0.85, abs=1e-3) and max(seen) == pytest.approx(0.9)
