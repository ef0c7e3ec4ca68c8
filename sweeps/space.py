"""Search-space files: dotted config keys mapped to one distribution each, validated against the config schema.

```yaml
dropout.p: {uniform: [0.1, 0.7]}          # float in [low, high]
train.lr: {loguniform: [1.0e-3, 1.0e-1]}  # float, uniform in log space
dropout.ramp_epochs: {randint: [1, 4]}    # integer in [low, high], both included
train.weight_decay: {quniform: [0, 1.0e-3, 1.0e-4]}   # float in [low, high] rounded to multiples of q
dropout.kind: {choice: [constant, uniform_subsets]}  # one of the values (sampled)
model.stem_mode: {grid: [prefix, slice]}  # every value (a grid axis: each sample is repeated per value)
```

Sections may also be nested (``dropout: {p: {uniform: [0.1, 0.7]}}``). Every key must be a config key and
every value a distribution can produce (range ends, choices, grid values) must pass the schema, so a bad file
fails before Ray starts, with one line naming the key. The schema is handed over by the caller (a
:class:`Schema`, e.g. ``dynconv.launch.config.SCHEMA``): sweeps know configs only as nested mappings.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dynconv.choices import SPACE_LISTS, SPACE_RANGES
from dynconv.errors import DynconvError
from dynconv.fileio import read_yaml

RANGES, LISTS = SPACE_RANGES, SPACE_LISTS
DISTRIBUTIONS = RANGES + LISTS
# set by the sweep itself (one run folder and MLflow run per trial, the budget, the scored subsets)
RESERVED = ("run.", "tracking.", "train.resume", "train.epochs", "eval.every_epoch", "eval.subsets")
# what PBT may change in a running trial: the channel-dropout schedule and the learning rate (both are read
# afresh when a trial resumes from a checkpoint; the architecture and data are not)
PBT_MUTABLE = ("dropout.", "train.lr")
EXAMPLE = "e.g. {uniform: [0.1, 0.7]}, {loguniform: [0.001, 0.1]}, {randint: [1, 4]}, {choice: [a, b]} or {grid: [a, b]}"


class Schema(Protocol):
    """What a sweep needs to know of the config schema (``dynconv.launch.config.ConfigSchema``)."""

    def keys(self) -> list[str]:
        """Every dotted config key."""

    def unknown_key_message(self, key: str) -> str:
        """One line naming the nearest valid key."""

    def validate(self, data: dict) -> dict:
        """The complete config of nested mapping ``data``; a bad key or value raises a one-line DynconvError."""


@dataclass(frozen=True)
class Dimension:
    key: str
    kind: str          # one of DISTRIBUTIONS
    args: tuple        # (low, high[, q]) for ranges, the values for choice/grid

    def domain(self, as_grid: bool = False):
        """The ``ray.tune`` sampling object (``as_grid``: a choice becomes a grid axis too)."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "quniform":
            return tune.quniform(*self.args)
        if self.kind == "randint":  # tune.randint excludes the upper bound; the file's form includes it
            return tune.randint(self.args[0], self.args[1] + 1)
        if self.kind == "grid" or as_grid:
            return tune.grid_search(list(self.args))
        return tune.choice(list(self.args))

    def clip(self, value):
        """``value`` moved into the dimension's range (PBT multiplies values by 0.8 or 1.2)."""
        if self.kind not in RANGES:
            return value
        low, high = self.args[0], self.args[1]
        value = min(max(value, low), high)
        return int(round(value)) if self.kind == "randint" else float(value)


@dataclass(frozen=True)
class SearchSpace:
    path: str
    raw: dict                 # the file's mapping, as loaded (stored with the sweep for --resume)
    dims: tuple[Dimension, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def param_space(self, search: str) -> dict:
        """Flat ``{"dotted.key": tune domain}``; for ``search='grid'`` choices become grid axes."""
        if search == "grid":
            continuous = [d.key for d in self.dims if d.kind in RANGES]
            if continuous:
                raise DynconvError(f"--search grid needs finite values, but {continuous[0]} in {self.path} is a range: "
                                   "use {grid: [...]} or {choice: [...]} there, or --search random")
            return {d.key: d.domain(as_grid=True) for d in self.dims}
        if search == "optuna" and any(d.kind == "grid" for d in self.dims):
            key = next(d.key for d in self.dims if d.kind == "grid")
            raise DynconvError(f"--search optuna samples every key; {key} in {self.path} is a grid: use {{choice: [...]}}")
        return {d.key: d.domain() for d in self.dims}

    def pbt_mutations(self) -> dict:
        """``hyperparam_mutations`` for PBT: ranges as domains (clipped by :meth:`clip`), choices as lists."""
        out = {}
        for d in self.dims:
            if d.key.startswith(PBT_MUTABLE) and d.kind != "grid":
                out[d.key] = list(d.args) if d.kind == "choice" else d.domain()
        if not out:
            raise DynconvError(f"--scheduler pbt mutates train.lr and dropout.* keys, and {self.path} has none: add "
                               "e.g. 'train.lr: {loguniform: [0.001, 0.1]}' or 'dropout.p: {uniform: [0.1, 0.7]}'")
        return out

    def clip(self, config: dict) -> dict:
        """PBT's ``custom_explore_fn``: keep perturbed values inside their ranges (a valid config)."""
        for d in self.dims:
            if d.key in config:
                config[d.key] = d.clip(config[d.key])
        return config


def plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, recursively (for YAML, pydantic and MLflow)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    return value


def set_key(data: dict, key: str, value: Any) -> dict:
    """A deep copy of the nested mapping ``data`` with ``key`` (dotted) set to ``value``."""
    data = copy.deepcopy(data)
    node = data
    *parents, last = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = copy.deepcopy(value)
    return data


def with_params(base: dict, params: dict) -> dict:
    """``base`` (a config as a nested mapping) with each ``dotted.key: value`` of ``params`` set (not validated)."""
    data = base
    for key, value in params.items():
        data = set_key(data, key, plain(value))
    return data


def apply_params(base: dict, params: dict, schema: Schema) -> dict:
    """:func:`with_params`, validated by ``schema``: the complete config."""
    return schema.validate(with_params(base, params))


def _flatten(raw: dict, keys: list[str], prefix: str = "") -> dict[str, Any]:
    """``{dropout: {p: D}}`` -> ``{"dropout.p": D}``; a mapping under a config section is a nested section."""
    out = {}
    sections = {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 1)}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        is_dist = isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS
        if isinstance(value, dict) and not is_dist and full in sections:
            out.update(_flatten(value, keys, f"{full}."))
        else:
            out[full] = value
    return out


def _number(key: str, kind: str, value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DynconvError(f"{where}: {key}: {kind} needs numbers, got {value!r}")
    return value


def _dimension(key: str, spec, where: str) -> Dimension:
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise DynconvError(f"{where}: {key} needs one distribution ({EXAMPLE}), got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in DISTRIBUTIONS:
        raise DynconvError(f"{where}: {key}: unknown distribution {kind!r}: use one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise DynconvError(f"{where}: {key}: {kind} needs a non-empty list, e.g. {kind}: [0.1, 0.7]")
    if kind in LISTS:
        return Dimension(key, kind, tuple(args))
    want = 3 if kind == "quniform" else 2
    if len(args) != want:
        form = "[low, high, q]" if kind == "quniform" else "[low, high]"
        raise DynconvError(f"{where}: {key}: {kind} needs {form}, got {args!r}")
    nums = [_number(key, kind, a, where) for a in args]
    low, high = nums[0], nums[1]
    if not low < high:
        raise DynconvError(f"{where}: {key}: {kind} needs low < high, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise DynconvError(f"{where}: {key}: loguniform needs low > 0, got {args!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise DynconvError(f"{where}: {key}: randint needs integers, got {args!r}")
    if kind == "quniform" and nums[2] <= 0:
        raise DynconvError(f"{where}: {key}: quniform needs q > 0, got {args!r}")
    return Dimension(key, kind, tuple(nums))


def parse_space(raw, where: str, schema: Schema, base: dict | None = None) -> SearchSpace:
    """Validate a loaded space mapping against the config ``schema`` (``base``: the sweep's config as a
    mapping; default: the schema's defaults)."""
    if not isinstance(raw, dict) or not raw:
        raise DynconvError(f"{where} must map config keys to distributions, e.g. 'dropout.p: {{uniform: [0.1, 0.7]}}'")
    base = schema.validate({}) if base is None else base
    keys = schema.keys()
    dims = []
    for key, spec in _flatten(raw, keys).items():
        if key not in keys:
            raise DynconvError(f"{where}: {schema.unknown_key_message(key)}")
        if key.startswith(RESERVED):
            why = ("the sweep's budget (ASHA's max_t): set it in the config or as an override" if key == "train.epochs"
                   else "set by the sweep for every trial")
            raise DynconvError(f"{where}: {key} cannot be searched: it is {why}")
        dim = _dimension(key, spec, where)
        # every value the distribution can produce must make a valid config
        for value in (dim.args[:2] if dim.kind in RANGES else dim.args):
            try:
                apply_params(base, {key: value}, schema)
            except DynconvError as e:
                raise DynconvError(f"{where}: {e}") from None
        dims.append(dim)
    return SearchSpace(where, raw, tuple(dims))


def read_space_file(path: str | Path):
    """The file's YAML content (validated by :func:`parse_space`)."""
    return read_yaml(path, "search space", "pass a YAML file such as sweeps/spaces/dropout.yaml")


def load_space(path: str | Path, schema: Schema, base: dict | None = None) -> SearchSpace:
    return parse_space(read_space_file(path), str(path), schema, base)
