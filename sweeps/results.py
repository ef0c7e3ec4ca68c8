"""A sweep's results: one row per trial, the summary table, the best trial."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dynconv.run_files import SWEEP_TRIAL

from .space import SearchSpace, plain
from .spec import TUNE_DIR, SweepSpec, num_trials


@dataclass
class TrialRow:
    trial: str
    params: dict
    epochs: int             # the last epoch reached
    trained_epochs: int     # epochs this trial trained (its results; PBT: also the ones its weights were dropped after)
    metric: float | None
    finished: bool          # trained every epoch and ran the final evaluation
    error: str | None
    exploits: int = 0


def tune_trials(out: Path) -> list:
    """The sweep's trials as Tune saved them (``ray.tune.experiment.Trial``: id, config, status)."""
    from ray.tune import ExperimentAnalysis

    return ExperimentAnalysis(str(out / TUNE_DIR)).trials


def collect_rows(results, trials: list, trials_dir: Path, metric: str) -> list[TrialRow]:
    """One row per result of ``Tuner.fit()``. A trial that Tune aborted before it reported (a reused actor
    that could not be reset) is handed that actor's previous trial's last result: such metrics are not its
    own and are dropped, and its parameters are taken from its saved ``trials`` entry."""
    configs = {t.trial_id: t.config for t in trials}
    rows = []
    for r in results:
        trial = Path(r.path).name  # the trial's folder is named by its id (build_tuner's trial_dirname_creator)
        m, df, config = r.metrics or {}, r.metrics_dataframe, r.config
        if m.get("trial_id") not in (None, trial):
            m, df, config = {}, None, configs.get(trial)
        state_file = trials_dir / trial / SWEEP_TRIAL
        exploits = len(json.loads(state_file.read_text())["exploits"]) if state_file.exists() else 0
        error = str(r.error).strip().splitlines()[-1].split("DynconvError: ")[-1][:200] if r.error else None
        rows.append(TrialRow(trial, plain(dict(config or {})), int(m.get("epoch", 0)),
                             len(df) if df is not None else int(m.get("epoch", 0)), m.get(metric),
                             bool(m.get("final_eval")), error, exploits))
    return sorted(rows, key=lambda row: row.trial)


def interrupted(trials: list, spec: SweepSpec, space: SearchSpace) -> bool:
    """Whether trials are left to run. Tune's saved state (``tune_trials``) is what tells, because after
    Ctrl+C the trials in memory have been stopped (and look terminated) once the state was saved with them
    still running."""
    return len(trials) < num_trials(spec, space) or any(t.status not in ("TERMINATED", "ERROR") for t in trials)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{_fmt(v)}" for k, v in value.items())
    return str(value)


def markdown(rows: list[TrialRow], spec: SweepSpec, keys: list[str], interrupted: bool) -> str:
    """The summary table: finished trials first, best first."""
    extra = ["exploits"] if spec.scheduler == "pbt" else []
    head = ["trial", *keys, "epochs", f"{spec.metric} (%)", "stopped early", *extra]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * len(keys) + "---:|---:|---|" + "---:|" * len(extra)]
    for row in sorted(rows, key=lambda r: (r.finished, -1 if r.metric is None else r.metric), reverse=True):
        if row.error:
            status = "error: " + row.error.replace("|", "/")
        elif row.finished:
            status = "no"
        else:
            status = "not yet" if interrupted else "yes"
        metric = "—" if row.metric is None else f"{100 * row.metric:.2f}"
        cells = [row.trial, *(_fmt(row.params.get(k, "")) for k in keys), str(row.epochs), metric, status]
        lines.append("| " + " | ".join(cells + [str(row.exploits)] * bool(extra)) + " |")
    return "\n".join(lines) + "\n"


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The finished trial with the highest metric (its final evaluation); else the best trial at all."""
    scored = [r for r in rows if r.metric is not None and not r.error]
    finished = [r for r in scored if r.finished]
    return max(finished or scored, key=lambda r: r.metric, default=None)
