"""``dynconv flops``: MACs and parameters of a model for one input."""
from __future__ import annotations

NAME = "flops"


def add_parser(sub) -> None:
    from dynconv.choices import STEM_MODES, STEM_PRESETS

    f = sub.add_parser(NAME, help="count MACs and parameters of a model for one input")
    f.add_argument("model")
    f.add_argument("--size", type=int, default=96)
    f.add_argument("--channels", default=None, help="present channels, e.g. RG (default: all)")
    f.add_argument("--dataset-channels", default="RGB", help="the dataset's channel names (default RGB)")
    f.add_argument("--stem-mode", default=None, choices=STEM_MODES)
    f.add_argument("--stem", default=None, choices=STEM_PRESETS, help="stem preset")
    f.add_argument("--classes", type=int, default=50)
    f.set_defaults(func=run)


def run(a) -> int:
    from dynconv.channels import parse_subset, validate_channels
    from dynconv.flops import count_macs, count_params
    from dynconv.models import create_model

    all_channels = validate_channels(a.dataset_channels)
    subset = parse_subset(a.channels or all_channels, all_channels)
    model = create_model(a.model, num_classes=a.classes, in_chans=len(all_channels), stem_mode=a.stem_mode,
                         stem=a.stem)
    macs = count_macs(model, len(all_channels), a.size, subset)
    name = "".join(all_channels[i] for i in subset)
    print(f"{a.model} at {a.size}x{a.size}, channels {name}, {a.classes} classes: "
          f"{macs:,} MACs ({macs / 1e9:.3f} G), {count_params(model):,} parameters")
    return 0
