"""Channel names and channel subsets.

A dataset has named channels. Single-letter names are written as one string (``"RGB"``, the default;
``"RGBUV"``); longer names as a list (``["DNA", "ER", "RNA", "AGP", "Mito"]``) or joined by ``-``
(``"DNA-ER-RNA-AGP-Mito"``, the canonical spelling stored in checkpoints, reports and MLflow params).
A *subset* is a non-empty selection of them, written the same way (``"RG"``, ``"DNA-Mito"``) and handled
as a tuple of channel indices in dataset order (``(0, 1)``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import combinations

from .errors import DynconvError

Subset = tuple[int, ...]
SEP = "-"  # between multi-letter names: MLflow metric names allow letters, digits, _ - . / : and space
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def channel_names(channels: str | Sequence[str]) -> tuple[str, ...]:
    """``"RGB"`` -> ``("R", "G", "B")``; ``"DNA-ER"`` or ``["DNA", "ER"]`` -> ``("DNA", "ER")``."""
    if isinstance(channels, str):
        names = tuple(channels.split(SEP)) if SEP in channels else tuple(channels)
    else:
        names = tuple(str(c) for c in channels)
    bad = [n for n in names if not _NAME.fullmatch(n)]
    if not names or bad or len(set(names)) != len(names):
        why = f"bad name(s) {', '.join(map(repr, bad))}" if bad else "repeated names" if names else "none given"
        raise DynconvError(
            f"invalid channel names {channels!r} ({why}): use distinct letters ('RGB') or a list of distinct names "
            "starting with a letter (letters, digits, _), e.g. [DNA, ER, RNA, AGP, Mito]")
    return names


def validate_channels(channels: str | Sequence[str]) -> str:
    """The canonical spelling: letters joined (``"RGB"``) when every name is one letter, else ``-``-joined."""
    return join_names(channel_names(channels))


def join_names(names: Sequence[str]) -> str:
    return ("" if all(len(n) == 1 for n in names) else SEP).join(names)


def num_channels(channels: str | Sequence[str]) -> int:
    return len(channel_names(channels))


def all_subsets(channels: str | Sequence[str] | int = "RGB") -> list[Subset]:
    """Every non-empty subset (of named channels or of ``n`` channels), largest first, then in
    dataset order: RGB, RG, RB, GB, R, G, B."""
    n = channels if isinstance(channels, int) else num_channels(channels)
    return [c for k in range(n, 0, -1) for c in combinations(range(n), k)]


def subset_name(subset: Subset, channels: str | Sequence[str] = "RGB") -> str:
    """``(0, 1)`` -> ``"RG"`` of RGB data; of ``DNA-ER-RNA`` data -> ``"DNA-ER"``."""
    names = channel_names(channels)
    sep = "" if all(len(n) == 1 for n in names) else SEP
    return sep.join(names[i] for i in subset)


def parse_subset(name: str, channels: str | Sequence[str] = "RGB") -> Subset:
    """``"GR"`` -> ``(0, 1)`` for RGB data, ``"Mito-DNA"`` -> ``(0, 4)`` for DNA-ER-RNA-AGP-Mito data;
    unknown or repeated channels are a user error."""
    names, name = channel_names(channels), name.strip()
    letters = all(len(n) == 1 for n in names)
    # letters may also be written like names ("R-G" is "RG"): one spelling of a subset for every dataset of a mixture
    parts = [p.strip() for p in (list(name) if letters and SEP not in name else name.split(SEP))] if name else []
    unknown = [p for p in parts if p not in names]
    if not parts or unknown:
        what = ("empty channel subset" if not unknown else f"unknown channel letter(s) {''.join(unknown)!r}"
                if letters else f"unknown channel(s) {', '.join(unknown)!r}")
        example = join_names(names[:2]) if letters else SEP.join(names[:2])
        raise DynconvError(
            f"{what}{f' in subset {name!r}' if name else ''}: use {'letters' if letters else f'names joined by {SEP!r}'} from "
            f"{join_names(names)!r}, e.g. {example!r}")
    if len(set(parts)) != len(parts):
        raise DynconvError(f"channel subset {name!r} repeats a channel: name each channel once")
    return tuple(sorted(names.index(p) for p in parts))


def parse_subsets(spec: str | None, channels: str | Sequence[str] = "RGB") -> list[Subset]:
    """``"RGB,RG,B"`` -> list of subsets; ``None``/``"all"`` -> every subset."""
    if spec is None or spec.strip().lower() == "all":
        return all_subsets(channels)
    out: list[Subset] = []
    for part in spec.split(","):
        s = parse_subset(part, channels)
        if s not in out:
            out.append(s)
    return out


def subsets_within(spec: str | None, channels: str | Sequence[str]) -> str | None:
    """The part of a subset list (``"RGB,R,DNA"``) that names only ``channels``, in their spelling: for one
    dataset of a mixture. ``None``/``"all"`` stays (every subset of the dataset); ``""`` when none applies."""
    if spec is None or spec.strip().lower() == "all":
        return spec
    kept = []
    for part in spec.split(","):
        try:
            kept.append(subset_name(parse_subset(part, channels), channels))
        except DynconvError:
            continue
    return ",".join(dict.fromkeys(kept))
