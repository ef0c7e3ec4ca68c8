"""Stem modes, model families, and MACs that match the original study."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynconv.channel_select import forward_subset
from dynconv.channels import all_subsets
from dynconv.flops import count_macs
from dynconv.layers import STEM_MODES, DynamicConv2D, create_stem
from dynconv.models import create_model

MODES = list(STEM_MODES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("c_max", [3, 5])
def test_stem_output_shape_for_every_subset(mode, c_max):
    stem = create_stem(mode, c_max, 16, "torchvision")
    for subset in all_subsets(c_max):
        x = torch.randn(2, len(subset), 33, 40)
        assert stem(x, subset).shape == (2, 16, 17, 20), (mode, subset)


@pytest.mark.parametrize("rescale", [False, True])
def test_slice_with_all_channels_equals_plain_conv(rescale):
    stem = create_stem("slice", 3, 8, "torchvision", rescale=rescale)
    plain = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
    plain.weight.data.copy_(stem.weight.data)
    x = torch.randn(2, 3, 20, 20)
    torch.testing.assert_close(stem(x, (0, 1, 2)), plain(x), rtol=0, atol=0)


def test_slice_uses_the_named_channels_and_rescales():
    stem = DynamicConv2D(3, 4, 3, padding=1, bias=False, mode="slice", rescale=True)
    x = torch.randn(1, 1, 8, 8)
    expected = 3 * torch.nn.functional.conv2d(x, stem.weight[:, [2]], padding=1)
    torch.testing.assert_close(stem(x, (2,)), expected)
    # prefix ignores identity: a B-only input uses R's filters
    prefix = DynamicConv2D(3, 4, 3, padding=1, bias=False, mode="prefix")
    torch.testing.assert_close(prefix(x, (2,)), torch.nn.functional.conv2d(x, prefix.weight[:, [0]], padding=1))


@pytest.mark.parametrize("mode", ["prefix", "slice"])
def test_absent_channels_get_no_gradient(mode):
    stem = create_stem(mode, 3, 4, "torchvision")
    stem(torch.randn(2, 1, 16, 16), (1,)).square().sum().backward()
    used = 0 if mode == "prefix" else 1
    g = stem.weight.grad.abs().sum(dim=(0, 2, 3))
    assert g[used] > 0 and g.sum() == g[used]


@pytest.mark.parametrize("mode", ["template_mixing", "hypernet", "depthwise"])
def test_generated_stems_train_only_present_channel_parameters(mode):
    stem = create_stem(mode, 3, 4, "torchvision")
    stem(torch.randn(2, 2, 16, 16), (0, 2)).square().sum().backward()
    per_channel = {"template_mixing": ["mix"], "hypernet": ["embedding"], "depthwise": ["bank", "channel_weight"]}
    for name in per_channel[mode]:
        g = getattr(stem, name).grad.abs().reshape(3, -1).sum(1)
        assert g[0] > 0 and g[2] > 0 and g[1] == 0, name


def _conv(x, w):
    return F.conv2d(x, w, stride=2, padding=3)  # the torchvision preset


def _set(param: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.no_grad():
        param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))
    return param.detach()


def test_template_mixing_follows_its_equation_and_the_reference_start():
    """W[:, i] = Σ_t α[i, t] T_t; 16 templates and orthogonal α by default; settable count and scale."""
    stem = create_stem("template_mixing", 3, 4, "torchvision")
    assert stem.templates.shape == (16, 4, 7, 7)
    torch.testing.assert_close(stem.mix @ stem.mix.T, torch.eye(3))  # orthonormal rows: filters at T's scale
    assert stem.channel_filters([0, 1, 2]).std().item() == pytest.approx(math.sqrt(2 / (4 * 49)), rel=0.2)
    stem = create_stem("template_mixing", 3, 4, "torchvision", stem_args={"num_templates": 5, "init_std": 0.5})
    templates, mix = _set(stem.templates, 0), _set(stem.mix, 1)
    assert templates.shape == (5, 4, 7, 7)
    x = torch.randn(2, 2, 16, 16)
    w = torch.stack([sum(mix[i, t] * templates[t] for t in range(5)) for i in (2, 0)], dim=1)
    torch.testing.assert_close(stem(x, (2, 0)), _conv(x, w))
    assert create_stem("template_mixing", 3, 64, stem_args={"init_std": 0.5}).templates.std().item() == \
        pytest.approx(0.5, rel=0.05)


def test_hypernet_is_linear_as_the_reference():
    """W[:, i] = reshape(B (A e_i + a) + b): embedding 128, hidden 256, no activation; starts at Kaiming scale."""
    stem = create_stem("hypernet", 3, 4, "torchvision")
    assert stem.embedding.shape == (3, 128) and stem.hidden.out_features == 256
    assert stem.channel_filters([0, 1, 2]).std().item() == pytest.approx(math.sqrt(2 / (4 * 49)), rel=1e-4)
    stem = create_stem("hypernet", 3, 4, "torchvision", stem_args={"embed_dim": 6, "hidden": 5})
    e, A, a = _set(stem.embedding, 0), _set(stem.hidden.weight, 1), _set(stem.hidden.bias, 2)
    B, b = _set(stem.out.weight, 3), _set(stem.out.bias, 4)
    x = torch.randn(2, 3, 16, 16)
    w = torch.stack([(B @ (A @ e[i] + a) + b).view(4, 7, 7) for i in (1, 0, 2)], dim=1)
    torch.testing.assert_close(stem(x, (1, 0, 2)), _conv(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("combine", ["softmax", "weighted", "mean", "sum"])
def test_depthwise_follows_the_reference(combine):
    """z_i = conv(x_i, D_i) (K filters per channel), u = Σ w_i z_i, y = InstanceNorm(P u)."""
    stem = create_stem("depthwise", 3, 4, "torchvision", stem_args={"kernels_per_channel": 2, "combine": combine})
    bank, project = _set(stem.bank, 0), _set(stem.project.weight, 1)
    beta = _set(stem.channel_weight, 2) if combine in ("softmax", "weighted") else None
    gamma, shift = _set(stem.norm.weight, 3), _set(stem.norm.bias, 4)
    x, ids = torch.randn(2, 2, 16, 16), [2, 0]
    z = [_conv(x[:, [j]], bank[i]) for j, i in enumerate(ids)]  # (n, K, h, w) per present channel
    w = {"softmax": torch.softmax(beta[ids], 0) if beta is not None else None, "weighted": beta[ids] if beta is not None else None,
         "mean": torch.full((2,), 0.5), "sum": torch.ones(2)}[combine]
    u = sum(w[j] * z[j] for j in range(2))
    p = F.conv2d(u, project)
    mu, var = p.mean((2, 3), keepdim=True), p.var((2, 3), unbiased=False, keepdim=True)
    expected = (p - mu) / torch.sqrt(var + 1e-5) * gamma.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    torch.testing.assert_close(stem(x, tuple(ids)), expected, rtol=1e-4, atol=1e-4)
    assert stem.bank.shape == (3, 2, 1, 7, 7)
    assert create_stem("depthwise", 3, 4).bank.shape == (3, 64, 1, 7, 7)  # the reference's 64 per channel


@pytest.mark.parametrize("mode, args, message", [
    ("template_mixing", {"templates": 4}, "has no setting 'templates' (takes num_templates, init_std)"),
    ("depthwise", {"combine": "max"}, "combine must be one of softmax, weighted, mean, sum"),
    ("hypernet", {"hidden": 0}, "hidden must be a positive int"),
    ("slice", {"num_templates": 4}, "stem_mode=slice has no setting 'num_templates' (takes none)"),
])
def test_bad_stem_args_are_one_line_errors(mode, args, message):
    from dynconv.errors import DynconvError

    with pytest.raises(DynconvError, match=re.escape(message)):
        create_stem(mode, 3, 4, stem_args=args)


def test_target_stem_is_one_plain_conv_per_subset():
    """y = conv(x, W_S) on hand-set weights, in the order x holds the channels; only W_S gets a gradient."""
    stem = create_stem("target", 3, 4, "torchvision")
    assert [tuple(w.shape) for w in stem.weights] == [(4, 3, 7, 7)] + [(4, 2, 7, 7)] * 3 + [(4, 1, 7, 7)] * 3
    with torch.no_grad():
        for k, w in enumerate(stem.weights):
            w.copy_(torch.arange(w.numel(), dtype=torch.float32).reshape(w.shape) * (k + 1) / w.numel())
    x = torch.randn(2, 2, 16, 16)
    rb = stem.weights[all_subsets(3).index((0, 2))]
    conv = lambda w: torch.nn.functional.conv2d(x, w, stride=2, padding=3)  # noqa: E731
    torch.testing.assert_close(stem(x, (0, 2)), conv(rb))
    torch.testing.assert_close(stem(x, (2, 0)), conv(rb[:, [1, 0]]))  # x holds B then R
    stem(x, (0, 2)).square().sum().backward()
    assert [w.grad is not None and bool(w.grad.abs().sum() > 0) for w in stem.weights] == [
        s == (0, 2) for s in all_subsets(3)]


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_round_trip_and_every_subset(mode, tmp_path):
    torch.manual_seed(0)
    a = create_model("dynamic_resnet18", num_classes=5, in_chans=3, stem_mode=mode).eval()
    torch.save(a.state_dict(), tmp_path / "m.pt")
    b = create_model("dynamic_resnet18", num_classes=5, in_chans=3, stem_mode=mode).eval()
    b.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    for subset in all_subsets(3):
        torch.testing.assert_close(forward_subset(a, x, subset), forward_subset(b, x, subset))
        assert forward_subset(a, x, subset).shape == (2, 5)


def test_five_channel_model_any_subset():
    model = create_model("dynamic_resnet18", num_classes=4, in_chans=5, stem_mode="slice").eval()
    x = torch.randn(1, 5, 40, 40)
    for subset in [(0, 1, 2, 3, 4), (1, 3), (4,)]:
        assert forward_subset(model, x, subset).shape == (1, 4)


@pytest.mark.parametrize("size", [96, 224])
def test_ran2_forward(size):
    model = create_model("ran2", num_classes=50).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 50)
    dyn = create_model("ran2", num_classes=50, stem_mode="slice").eval()
    with torch.no_grad():
        assert forward_subset(dyn, torch.randn(1, 3, size, size), (1,)).shape == (1, 50)


# ---- MACs against the study's tables ----------------------------------------------------------------

def _within(value, target, tol):
    assert abs(value - target) / target <= tol, f"{value:,} vs {target:,} ({(value - target) / target:+.3%})"


def test_macs_resnet18_and_resnet34():
    _within(count_macs(create_model("resnet18", num_classes=50), 3, 96), 333_585_408, 0.005)
    _within(count_macs(create_model("resnet34", num_classes=50), 3, 224), 3_667_013_632, 0.005)


def test_macs_study_stem_and_per_channel_saving():
    model = create_model("dynamic_resnet18", num_classes=50, stem="study")
    rgb, rg, r = (count_macs(model, 3, 96, s) for s in [(0, 1, 2), (0, 1), (0,)])
    _within(rgb, 1_274_698_880, 0.005)
    assert rgb - rg == rg - r == 26_543_104 == 64 * 49 * 92 * 92


def _norm_and_pool_elements(model: nn.Module, size: int) -> int:
    """Elements through BatchNorm layers plus pooled outputs: what the study's counter added to conv/fc MACs."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.BatchNorm2d, nn.AdaptiveAvgPool2d))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


def test_study_stem_reconstruction_is_exact():
    """conv/fc MACs + BN and pooling elements reproduce the study's figures to the unit, for the plain
    ResNet18 and for the 7×7 stride-1 padding-1 stem derived from its per-channel saving."""
    plain = create_model("resnet18", num_classes=50)
    assert count_macs(plain, 3, 96) + _norm_and_pool_elements(plain, 96) == 333_585_408
    study = create_model("dynamic_resnet18", num_classes=50, stem="study")
    assert count_macs(study, 3, 96) + _norm_and_pool_elements(study, 96) == 1_274_698_880


def test_macs_ran2():
    _within(count_macs(create_model("ran2", num_classes=50), 3, 224), 3_715_245_312, 0.05)


@pytest.mark.slow
def test_channels_last_and_compiled_forward():
    model = create_model("dynamic_resnet18", num_classes=3, stem_mode="slice").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = forward_subset(model, x, (0, 2))
        cl = forward_subset(model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), (0, 2))
        torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-4)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x[:, [0, 2]], channels=(0, 2)), ref, rtol=1e-4, atol=1e-4)


def test_flops_init_stats_report_the_starting_scale(capsys):
    from helpers import run_cli

    def scales(*argv) -> tuple[float, float]:
        assert run_cli("flops", "dynamic_resnet18", "--init-stats", *argv) == 0
        found = re.search(r"filters std ([\d.]+) \(plain conv, Kaiming fan_out: ([\d.]+)", capsys.readouterr().out)
        return float(found[1]), float(found[2])

    assert scales("--stem-mode", "hypernet", "--stem-arg", "init_std=0.1")[0] == 0.1
    for mode in ("template_mixing", "hypernet", "slice", "target"):
        filters, kaiming = scales("--stem-mode", mode, "--channels", "RG")
        assert filters == pytest.approx(kaiming, rel=0.1), mode


@pytest.mark.parametrize("name", ["resnet18", "dynamic_resnet18", "resnet34", "ran2"])
def test_width_narrows_every_stage_and_keeps_the_parameter_names(name):
    torch.manual_seed(0)
    full = create_model(name, num_classes=4)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                  create_model(name, num_classes=4, width=64).state_dict().values()))
    narrow = create_model(name, num_classes=4, width=16)
    wide, small = full.state_dict(), narrow.state_dict()
    assert list(wide) == list(small)  # same names: checkpoints and torchvision key maps stay valid
    for key, tensor in wide.items():  # every conv/linear/norm is 4x narrower in each width dimension it has
        assert all(a == b or a == 4 * b for a, b in zip(tensor.shape, small[key].shape)), key
    n_full, n_small = (sum(p.numel() for p in m.parameters()) for m in (full, narrow))
    assert 15 < n_full / n_small < 17
    assert count_macs(full, 3, 32) / count_macs(narrow, 3, 32) > 12
    convs = [m for m in narrow.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert convs and name == "ran2" or all(abs(c.weight.std().item() / math.sqrt(2 / (c.out_channels * 9)) - 1) < 0.2 for c in convs
                         if c.weight.numel() > 2000)  # ResNets: torchvision's Kaiming (fan_out) start, not PyTorch's default
    x = torch.randn(2, 3, 32, 32)
    assert forward_subset(narrow, x, (0, 2)).shape == (2, 4)


def test_resolved_kwargs_are_every_builder_argument_and_build_the_same_model():
    """What checkpoints and MLflow record: every argument of the builder, its own defaults filled in (a None
    is "not given"); a plain model has no stem_mode to record, and an argument it lacks is one line."""
    import inspect

    from dynconv.errors import DynconvError
    from dynconv.models import model_options, resolve_model_kwargs
    from dynconv.models.registry import _MODELS

    kwargs = resolve_model_kwargs("dynamic_resnet18", num_classes=5, stem_mode="slice", norm=None, width=8)
    assert list(kwargs) == model_options("dynamic_resnet18")
    defaults = {k: p.default for k, p in inspect.signature(_MODELS["dynamic_resnet18"]).parameters.items()}
    assert kwargs == {**defaults, "num_classes": 5, "stem_mode": "slice", "width": 8}
    assert kwargs["norm"] == "shared" and kwargs["stem"] == "torchvision"
    assert "stem_mode" not in resolve_model_kwargs("resnet18")
    torch.manual_seed(0)
    a = create_model("dynamic_resnet18", num_classes=5, stem_mode="slice", width=8)
    torch.manual_seed(0)
    b = create_model("dynamic_resnet18", **kwargs)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    with pytest.raises(DynconvError, match="model resnet18 has no option 'stem_mode'"):
        resolve_model_kwargs("resnet18", stem_mode="slice")


def test_a_checkpoint_that_recorded_only_the_set_arguments_still_loads_with_every_one(tmp_path):
    """Checkpoints written before every resolved argument was recorded kept only the set ones: they load, and
    readers (calibrate, compare, eval) find the builder's defaults for the rest."""
    from dynconv.models import model_options
    from dynconv.train.checkpoint import load_checkpoint, make_manifest, model_from_checkpoint

    torch.manual_seed(0)
    model = create_model("dynamic_resnet18", num_classes=4, stem_mode="slice", width=8).eval()
    old = make_manifest("dynamic_resnet18", {"num_classes": 4, "in_chans": 3, "stem_mode": "slice", "width": 8},
                        "RGB", 32, [0.5] * 3, [0.25] * 3, ["a", "b", "c", "d"])
    torch.save({"dynconv": old, "model": model.state_dict(), "epoch": 1}, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    kwargs = ckpt["dynconv"]["model_kwargs"]
    assert list(kwargs) == model_options("dynamic_resnet18")
    assert (kwargs["norm"], kwargs["stem"], kwargs["stem_mode"], kwargs["width"]) == ("shared", "torchvision", "slice", 8)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model_from_checkpoint(ckpt).eval()(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("subset", [(0,), (0, 2), (1, 2)])
def test_a_channels_last_model_stays_channels_last_on_every_subset(subset):
    """The channels a subset keeps, and the stem's weight slice, stay channels_last when the model and batch are:
    a gathered x[:, ids] or W[:, ids] is NCHW (with one channel NCHW even passes for channels_last), and the
    model then ran NCHW behind its stem — 1.35x slower with R+B, 1.09x with R alone on an H200
    (docs/benchmarks.md)."""
    from dynconv.channel_select import select_channels

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    picked = select_channels(x.contiguous(memory_format=torch.channels_last), subset, adaptive=True)
    assert picked.stride()[1] == 1 and torch.equal(picked, x[:, list(subset)])  # NHWC in memory, same values
    for mode in ("prefix", "slice"):
        model = create_model("dynamic_resnet18", num_classes=4, stem_mode=mode, width=8).eval()
        expected = forward_subset(model, x, subset)
        model.to(memory_format=torch.channels_last)
        seen = {}
        model.layer1.register_forward_hook(lambda m, i, o: seen.update(out=o))
        logits = forward_subset(model, x.contiguous(memory_format=torch.channels_last), subset)
        assert seen["out"].is_contiguous(memory_format=torch.channels_last) and seen["out"].stride()[1] == 1, mode
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def _torchvision_resnet18(num_classes: int = 10) -> tuple[nn.Module, dict]:
    """A torchvision resnet18 with non-trivial weights and running statistics, and its state dict (the format of
    torchvision's published weights), made here: no download."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    tv = resnet18(num_classes=num_classes)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return tv.eval(), tv.state_dict()


@pytest.mark.parametrize("mode, norm, args, exact", [
    ("slice", "recalibrate", None, True), ("prefix", "shared", None, True), ("target", "switchable", None, True),
    ("template_mixing", "shared", None, False), ("hypernet", "shared", None, False)])
def test_a_pretrained_dynamic_resnet_given_rgb_computes_the_pretrained_logits(mode, norm, args, exact):
    from dynconv.models.pretrained import load_pretrained

    tv, state = _torchvision_resnet18()
    model = create_model("dynamic_resnet18", num_classes=10, stem_mode=mode, norm=norm, stem_args=args).eval()
    assert load_pretrained(model, state, "RGB") == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = tv(x), forward_subset(model, x, (0, 1, 2))
    if exact:
        assert torch.equal(expected, got)
    else:  # generated filters: W rebuilt from a factorisation, equal to float rounding
        assert torch.allclose(expected, got, rtol=1e-4, atol=1e-4)
    if mode != "prefix":  # a subset sees the pretrained filters of its channels
        with torch.no_grad():
            g_only = tv.conv1.weight[:, [1]].clone()
            tv.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
            tv.conv1.weight.copy_(g_only)
            assert torch.allclose(forward_subset(model, x, (1,)), tv(x[:, [1]]), rtol=1e-4, atol=1e-4)


def test_pretrained_weights_map_channels_by_name_and_keep_a_new_head():
    from dynconv.models.pretrained import by_channel_name, load_pretrained

    _, state = _torchvision_resnet18(num_classes=1000)
    w = state["conv1.weight"]
    mapped = by_channel_name(w, "BGRU")
    assert torch.equal(mapped[:, 0], w[:, 2]) and torch.equal(mapped[:, 2], w[:, 0])
    assert torch.allclose(mapped[:, 3], w.mean(1))
    model = create_model("dynamic_resnet18", num_classes=7, in_chans=4, stem_mode="slice")
    head = model.fc.weight.clone()
    assert load_pretrained(model, state, "BGRU") == ["fc"]  # 1000 ImageNet classes, 7 here: a fresh head
    assert torch.equal(model.fc.weight, head) and torch.equal(model.conv1.weight, mapped)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


def test_a_pretrained_depthwise_stem_is_the_pretrained_conv_then_its_instance_norm():
    from dynconv.models.pretrained import load_pretrained

    _, state = _torchvision_resnet18()
    model = create_model("dynamic_resnet18", num_classes=10, stem_mode="depthwise").eval()
    load_pretrained(model, state, "RGB")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        conv = F.conv2d(x, state["conv1.weight"], stride=2, padding=3)
        assert torch.allclose(model.conv1(x, (0, 1, 2)), model.conv1.norm(conv), atol=1e-5)


@pytest.mark.parametrize("source, fragment", [
    ("missing.pt", "no such file"), ("notresnet.pt", "has no conv1.weight"), ("narrow.pt", "use model.width=64")])
def test_bad_pretrained_weights_are_one_line_errors(tmp_path, source, fragment):
    from dynconv.errors import DynconvError
    from dynconv.models.pretrained import load_pretrained, pretrained_state_dict

    torch.save({"a": torch.zeros(1)}, tmp_path / "notresnet.pt")
    torch.save(create_model("resnet18", num_classes=10, width=16).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(DynconvError, match=fragment):
        load_pretrained(create_model("dynamic_resnet18", num_classes=10),
                        pretrained_state_dict(str(tmp_path / source), "resnet18"), "RGB")
