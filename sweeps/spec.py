"""What defines a sweep: its options (:class:`SweepOptions`), the resolved settings stored with it
(:class:`SweepSpec`, ``out/sweep.json``, read back by ``--resume``), and every check that can fail before Ray
starts."""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from dynconv.channels import parse_subsets, subset_name, subsets_within, validate_channels
from dynconv.choices import SWEEP_SCHEDULERS as SCHEDULERS, SWEEP_SEARCHES as SEARCHES
from dynconv.errors import DynconvError
from dynconv.fileio import atomic_write_text

from .space import Schema, SearchSpace, parse_space, plain, read_space_file

SPEC_FILE, TUNE_DIR, TRIALS_DIR = "sweep.json", "tune", "trials"
DEFAULTS = {"scheduler": "asha", "search": "random", "metric": "worst_subset_acc", "resources": "cpu=1,gpu=0",
            "grace_period": 1, "reduction_factor": 3, "seed": 0}


@dataclass(frozen=True)
class SweepOptions:
    """How to search (the ``dynconv sweep`` options); ``None``: the default, or on resume the stored value."""

    scheduler: str | None = None        # asha | pbt | fifo
    search: str | None = None           # random | grid | optuna
    num_samples: int | None = None      # trials (grid: repeats of the grid)
    max_concurrent: int | None = None
    metric: str | None = None           # worst_subset_acc | mean_subset_acc | acc_<subset>, maximised
    resources: str | dict | None = None  # per trial: "cpu=1,gpu=0"
    grace_period: int | None = None     # ASHA: epochs before a trial can be stopped
    reduction_factor: float | None = None  # ASHA: keep 1/F of the trials per rung
    perturbation_interval: int | None = None  # PBT: epochs between exploit/explore steps
    seed: int | None = None


@dataclass
class SweepSpec:
    """Everything that defines a sweep; stored as ``out/sweep.json``."""
    base: dict                  # the config (file + overrides) as a nested mapping, data paths absolute
    space: dict                 # the search-space file's mapping
    space_path: str
    scheduler: str
    search: str
    num_samples: int
    max_concurrent: int | None
    metric: str
    resources: dict             # per trial: {"cpu": 1.0, "gpu": 0.0}
    grace_period: int           # ASHA: epochs before a trial can be stopped
    reduction_factor: float     # ASHA: keep 1/reduction_factor of the trials at each rung
    perturbation_interval: int  # PBT: epochs between exploit/explore steps
    seed: int

    @property
    def epochs(self) -> int:
        return int(self.base["train"]["epochs"])

    def search_space(self, schema: Schema) -> SearchSpace:
        return parse_space(self.space, self.space_path, schema, self.base)

    def save(self, out: Path) -> Path:
        return atomic_write_text(out / SPEC_FILE, json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, out: Path) -> "SweepSpec":
        return cls(**json.loads((out / SPEC_FILE).read_text()))


def parse_resources(text: str) -> dict[str, float]:
    """``cpu=1,gpu=0.5`` -> ``{"cpu": 1.0, "gpu": 0.5}``."""
    out = {"cpu": 1.0, "gpu": 0.0}
    for item in (s.strip() for s in str(text).split(",") if s.strip()):
        key, eq, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not eq or key not in out or not number >= 0:
            raise DynconvError(f"--resources-per-trial {text!r}: use cpu=N,gpu=M with numbers >= 0 (e.g. cpu=1,gpu=0)")
        out[key] = number
    if out["cpu"] + out["gpu"] <= 0:
        raise DynconvError(f"--resources-per-trial {text!r}: a trial needs some cpu or gpu")
    return out


def _absolute_paths(base: dict) -> dict:
    """Trials run in other working directories (Ray workers): make relative data paths and sqlite URIs absolute."""
    for _, holder, field in _data_paths(base["data"]):
        value = holder.get(field)
        if value and not Path(value).is_absolute() and Path(value).exists():
            holder[field] = str(Path(value).resolve())
    uri = base["tracking"].get("uri")
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        base["tracking"]["uri"] = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return base


def _check_metric(metric: str, base: dict) -> None:
    train, spec = base["data"]["train"], base["eval"]["subsets"]
    if isinstance(train, list):  # a mixture: acc_<dataset>:<subset> for each dataset's subsets of eval.subsets
        names = []
        for entry in train:  # a dumped config: channels in their canonical spelling
            within = subsets_within(spec, entry["channels"])
            subsets = parse_subsets(within, entry["channels"]) if within else []
            names += [f"{entry['name'] or entry['channels']}:{subset_name(s, entry['channels'])}" for s in subsets]
    else:
        channels = validate_channels(base["data"]["channels"])
        names = [subset_name(s, channels) for s in parse_subsets(spec, channels)]
    allowed = ["worst_subset_acc", "mean_subset_acc"] + [f"acc_{n}" for n in names]
    if metric not in allowed:
        raise DynconvError(f"--metric {metric}: choose one of {', '.join(allowed)} (acc_<subset> for a subset in "
                           "eval.subsets)")


def _check(spec: SweepSpec, schema: Schema) -> SearchSpace:
    """Every user error, before Ray starts or anything is written."""
    if spec.scheduler not in SCHEDULERS:
        raise DynconvError(f"--scheduler {spec.scheduler}: choose one of {', '.join(SCHEDULERS)}")
    if spec.search not in SEARCHES:
        raise DynconvError(f"--search {spec.search}: choose one of {', '.join(SEARCHES)}")
    space = spec.search_space(schema)
    space.param_space(spec.search)  # grid needs finite values, optuna no grid axes
    if spec.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise DynconvError("--search optuna needs the optuna package: pip install optuna (it is in the "
                               "'sweep' extra: pip install 'dynconv[sweep]')") from None
        if spec.scheduler == "pbt":
            raise DynconvError("--scheduler pbt chooses its own values: use it with --search random or grid")
    _check_metric(spec.metric, spec.base)
    if spec.num_samples < 1:
        raise DynconvError(f"--num-samples must be at least 1, got {spec.num_samples}")
    if spec.max_concurrent is not None and spec.max_concurrent < 1:
        raise DynconvError(f"--max-concurrent must be at least 1, got {spec.max_concurrent}")
    if spec.scheduler == "asha":
        if not 1 <= spec.grace_period <= spec.epochs:
            raise DynconvError(f"--grace-period {spec.grace_period} must be between 1 and train.epochs={spec.epochs}")
        if not spec.reduction_factor > 1:
            raise DynconvError(f"--reduction-factor must be greater than 1, got {spec.reduction_factor}")
    if spec.scheduler == "pbt":
        if not 1 <= spec.perturbation_interval < spec.epochs:
            raise DynconvError(f"--perturbation-interval {spec.perturbation_interval} must be at least 1 and less "
                               f"than train.epochs={spec.epochs} (PBT acts between epochs)")
        space.pbt_mutations()
    for key, holder, field in _data_paths(spec.base["data"]):
        path = holder.get(field)
        if not path:
            raise DynconvError(f"config key '{key}' is required: a .beton file or an image folder")
        if not Path(path).exists():  # checked here rather than once per trial
            raise DynconvError(f"{key} {path} does not exist: pass a .beton file or an image folder")
    return space


def _data_paths(data: dict) -> list[tuple[str, dict, str]]:
    """Every data path of a config's ``data`` mapping as (config key, the mapping holding it, its field):
    data.train and data.val, or each dataset's path and val of a mixture."""
    if isinstance(data.get("train"), list):
        return [(f"data.train[{e.get('name') or e.get('channels')}].{field}", e, field)
                for e in data["train"] for field in ("path", "val")]
    return [(f"data.{field}", data, field) for field in ("train", "val")]


def resolve_spec(out: Path, resume: bool, base: dict | None, space: str | None, schema: Schema,
                 options: SweepOptions | None = None) -> SweepSpec:
    """The sweep's settings: from the arguments, or (``resume``) from ``out/sweep.json``, where any argument
    that is given must agree with the stored value. ``base``: the sweep's config as a complete nested mapping
    (``None``: not given; on resume, the stored one)."""
    given_base = _absolute_paths(copy.deepcopy(base)) if base is not None else None
    given_space = read_space_file(space) if space is not None else None
    options = asdict(options or SweepOptions())
    if options.get("resources") is not None:
        options["resources"] = parse_resources(options["resources"])
    if resume:
        if not (out / SPEC_FILE).exists():
            raise DynconvError(f"--resume: {out} holds no sweep to resume ({SPEC_FILE} is missing): run without --resume")
        spec = SweepSpec.load(out)
        given = {**options, "base": given_base, "space": given_space}
        for f in fields(SweepSpec):
            value = given.get(f.name)
            if value is not None and plain(value) != plain(getattr(spec, f.name)):
                name = {"base": "the config (--config and overrides)", "space": "the search space"}.get(
                    f.name, "--" + f.name.replace("_", "-"))
                raise DynconvError(f"--resume: {name} differs from the interrupted sweep's in {out}: resume with the "
                                   "same settings (or none), or start a new sweep with another --out")
        _check(spec, schema)
        return spec
    if base is None or space is None:
        raise DynconvError("dynconv sweep needs --config CFG and --space SPACE.yaml (or --resume with --out DIR)")
    epochs = int(given_base["train"]["epochs"])
    defaults = {**DEFAULTS, "num_samples": 1 if options["search"] == "grid" else 10,
                "perturbation_interval": max(1, epochs // 4)}
    values = {k: v if v is not None else defaults.get(k) for k, v in options.items()}
    if isinstance(values["resources"], str):
        values["resources"] = parse_resources(values["resources"])
    spec = SweepSpec(
        base=given_base, space=given_space, space_path=str(space), scheduler=values["scheduler"],
        search=values["search"], num_samples=int(values["num_samples"]), max_concurrent=values["max_concurrent"],
        metric=values["metric"], resources=values["resources"], grace_period=int(values["grace_period"]),
        reduction_factor=float(values["reduction_factor"]),
        perturbation_interval=int(values["perturbation_interval"]), seed=int(values["seed"]))
    _check(spec, schema)
    return spec


def num_trials(spec: SweepSpec, space: SearchSpace) -> int:
    """num_samples, times the size of the grid (Tune repeats the grid for every sample)."""
    n = spec.num_samples
    for d in space.dims:
        if d.kind == "grid" or (spec.search == "grid" and d.kind == "choice"):
            n *= len(d.args)
    return n
