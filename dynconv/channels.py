"""Channel names and channel subsets.

A dataset has named channels (``"RGB"`` by default; any string of distinct letters, e.g. ``"RGBUV"``).
A *subset* is a non-empty selection of them, written as letters (``"RG"``) and handled as a tuple of
channel indices in dataset order (``(0, 1)``).
"""
from __future__ import annotations

from itertools import combinations

from .errors import DynconvError

Subset = tuple[int, ...]


def validate_channels(channels: str) -> str:
    if not channels or not channels.isalpha() or len(set(channels)) != len(channels):
        raise DynconvError(
            f"invalid channel names {channels!r}: use distinct letters, one per channel (e.g. 'RGB')"
        )
    return channels


def all_subsets(channels: str | int = "RGB") -> list[Subset]:
    """Every non-empty subset (of named channels or of ``n`` channels), largest first, then in
    dataset order: RGB, RG, RB, GB, R, G, B."""
    n = channels if isinstance(channels, int) else len(validate_channels(channels))
    return [c for k in range(n, 0, -1) for c in combinations(range(n), k)]


def subset_name(subset: Subset, channels: str = "RGB") -> str:
    return "".join(channels[i] for i in subset)


def parse_subset(name: str, channels: str = "RGB") -> Subset:
    """``"GR"`` -> ``(0, 1)`` for RGB data; unknown or repeated letters are a user error."""
    name = name.strip()
    unknown = sorted({c for c in name if c not in channels})
    if not name or unknown:
        what = f"unknown channel letter(s) {''.join(unknown)!r}" if unknown else "empty channel subset"
        raise DynconvError(
            f"{what} in subset {name!r}: use letters from {channels!r}, e.g. {channels[:2]!r}"
        )
    if len(set(name)) != len(name):
        raise DynconvError(f"channel subset {name!r} repeats a letter: name each channel once")
    return tuple(sorted(channels.index(c) for c in name))


def parse_subsets(spec: str | None, channels: str = "RGB") -> list[Subset]:
    """``"RGB,RG,B"`` -> list of subsets; ``None``/``"all"`` -> every subset."""
    if spec is None or spec.strip().lower() == "all":
        return all_subsets(channels)
    out: list[Subset] = []
    for part in spec.split(","):
        s = parse_subset(part, channels)
        if s not in out:
            out.append(s)
    return out
