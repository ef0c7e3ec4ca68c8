"""One line per trial event instead of Ray Tune's result tables, so the final summary stays readable."""
from __future__ import annotations

import sys
from pathlib import Path

from ray.tune import Callback


class ProgressLines(Callback):
    """Prints ``[sweep] <trial> started|finished|stopped early|failed ...`` lines (stateless: resumable)."""

    def __init__(self, metric: str, trials_dir: str):
        self.metric, self.trials_dir = metric, trials_dir

    @staticmethod
    def _print(text: str) -> None:
        print(f"[sweep] {text}", file=sys.stdout, flush=True)

    @staticmethod
    def _done(trials, trial) -> str:
        over = sum(t.status in ("TERMINATED", "ERROR") for t in trials if t is not trial) + 1
        return f"{over}/{len(trials)}"

    def on_trial_start(self, iteration, trials, trial, **info):
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        self._print(f"{trial.trial_id} running: {params}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        how = "finished" if result.get("final_eval") else "stopped early"
        value = result.get(self.metric)
        score = f"{self.metric} {100 * value:.2f}%" if isinstance(value, (int, float)) else "no result"
        self._print(f"{trial.trial_id} {how} at epoch {result.get('epoch', 0)}: {score} ({self._done(trials, trial)} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        log = Path(self.trials_dir) / trial.trial_id / "train.log"
        last = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        reason = last[0] if last and last[0].startswith("dynconv: error: ") else f"see {log}"
        self._print(f"{trial.trial_id} failed ({self._done(trials, trial)} done): {reason.removeprefix('dynconv: ')}")
