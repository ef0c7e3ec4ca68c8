"""A sweep's results: one row per trial, the summary table, the best trial."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

from dynconv.run_files import SWEEP_TRIAL, recorded_mlflow_run

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


def collect_rows(results, spec: SweepSpec, trials_dir: Path) -> list[TrialRow]:
    rows = []
    for r in results:
        m = r.metrics or {}
        trial = str(m.get("trial_id") or Path(r.path).name)
        df = r.metrics_dataframe
        state_file = trials_dir / trial / SWEEP_TRIAL
        exploits = len(json.loads(state_file.read_text())["exploits"]) if state_file.exists() else 0
        error = str(r.error).strip().splitlines()[-1].split("DynconvError: ")[-1][:200] if r.error else None
        rows.append(TrialRow(trial, plain(dict(r.config or {})), int(m.get("epoch", 0)),
                             len(df) if df is not None else int(m.get("epoch", 0)), m.get(spec.metric),
                             bool(m.get("final_eval")), error, exploits))
    return sorted(rows, key=lambda row: row.trial)


def interrupted(out: Path, spec: SweepSpec, space: SearchSpace) -> bool:
    """Whether trials are left to run. Tune's saved state is read back because, after Ctrl+C, the trials in
    memory have been stopped (and look terminated) once the state was saved with them still running."""
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(out / TUNE_DIR)).trials
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


def tag_trial_runs(rows: list[TrialRow], trials_dir: Path) -> None:
    """Tag every trial's MLflow run with how far it got (its status is the trainer's: an early stop is
    FINISHED); tracking never fails the sweep."""
    from dynconv.launch.mlflow_store import mlflow_client

    for row in rows:
        info = recorded_mlflow_run(trials_dir / row.trial)
        if info is None:
            continue
        try:
            client = mlflow_client(info["tracking_uri"])
            client.set_tag(info["run_id"], "dynconv.sweep.stopped_early", str(not row.finished and not row.error).lower())
            client.set_tag(info["run_id"], "dynconv.sweep.epochs", str(row.epochs))
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"could not tag MLflow run {info['run_id']}: {str(e).splitlines()[0][:120]}", stacklevel=2)
