"""``dynconv flops``: MACs and parameters of a model for one input."""
from __future__ import annotations

NAME = "flops"


def add_parser(sub) -> None:
    from dynconv.choices import STEM_MODES, STEM_PRESETS

    f = sub.add_parser(NAME, help="count MACs and parameters of a model for one input")
    f.add_argument("model")
    f.add_argument("--size", type=int, default=96)
    f.add_argument("--channels", default=None, help="present channels, e.g. RG or DNA-Mito (default: all)")
    f.add_argument("--dataset-channels", default="RGB", help="the dataset's channel names: letters (default RGB) or names joined by '-' (DNA-ER-Mito)")
    f.add_argument("--stem-mode", default=None, choices=STEM_MODES)
    f.add_argument("--stem", default=None, choices=STEM_PRESETS, help="stem preset")
    f.add_argument("--stem-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a stem setting (model.stem_args), e.g. num_templates=8; repeatable")
    f.add_argument("--classes", type=int, default=50)
    f.add_argument("--width", type=int, default=None, help="channels of the first stage (model.width; default 64)")
    f.add_argument("--init-stats", action="store_true",
                   help="also the stem's starting scale: its filters' and its output's standard deviation on "
                        "N(0, 1) input, beside a plain Kaiming-initialised conv's")
    f.set_defaults(func=run)


def _stem_args(pairs: list[str]) -> dict | None:
    import yaml

    from dynconv.errors import DynconvError

    args = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DynconvError(f"--stem-arg {pair!r}: write KEY=VALUE, e.g. --stem-arg num_templates=8")
        args[key] = yaml.safe_load(value)
    return args or None


def init_stats(stem, subset: tuple[int, ...], size: int, preset: str) -> str:
    """The stem's starting filter and output scale for ``subset``, beside a plain conv of its geometry."""
    import torch
    from torch import nn

    from dynconv.channel_select import forward_subset
    from dynconv.layers.stems import stem_preset

    p = stem_preset(preset)
    x = torch.randn(8, len(subset), size, size, generator=torch.Generator().manual_seed(0))
    plain = nn.Conv2d(len(subset), stem.out_channels, p.kernel, p.stride, p.padding, bias=False)
    nn.init.kaiming_normal_(plain.weight, mode="fan_out", nonlinearity="relu")
    with torch.no_grad():
        y = stem(x) if type(stem) is nn.Conv2d else forward_subset(stem, x, subset)
        ref = plain(x)
        if hasattr(stem, "channel_filters"):
            filters = stem.channel_filters(list(subset))
        elif hasattr(stem, "bank"):
            filters = None  # depthwise: per-channel banks, then a 1×1 conv and an instance norm
        else:
            filters = stem.weight[:, list(subset)] if stem.weight.shape[1] > len(subset) else stem.weight
    first = "filters: per-channel banks, 1x1 conv, instance norm" if filters is None else \
        f"filters std {filters.std().item():.4f} (plain conv, Kaiming fan_out: {plain.weight.std().item():.4f})"
    return (f"stem at initialisation: {first}; output std on N(0, 1) input {y.std().item():.3f} "
            f"(plain conv: {ref.std().item():.3f})")


def run(a) -> int:
    from dynconv.channels import num_channels, parse_subset, subset_name, validate_channels
    from dynconv.flops import count_macs, count_params
    from dynconv.models import create_model, resolve_model_kwargs

    all_channels = validate_channels(a.dataset_channels)
    subset = parse_subset(a.channels or all_channels, all_channels)
    import torch

    torch.manual_seed(0)  # the same starting weights (and --init-stats) every time
    kwargs = resolve_model_kwargs(a.model, num_classes=a.classes, in_chans=num_channels(all_channels),
                                  stem_mode=a.stem_mode, stem=a.stem, stem_args=_stem_args(a.stem_arg), width=a.width)
    model = create_model(a.model, **kwargs)
    macs = count_macs(model, num_channels(all_channels), a.size, subset)
    name = subset_name(subset, all_channels)
    print(f"{a.model} at {a.size}x{a.size}, channels {name}, {a.classes} classes: "
          f"{macs:,} MACs ({macs / 1e9:.3f} G), {count_params(model):,} parameters")
    if a.init_stats:
        print(init_stats(model.conv1, subset, a.size, kwargs["stem"]))
    return 0
