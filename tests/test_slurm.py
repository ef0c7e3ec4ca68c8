"""`dynconv submit/jobs/logs/cancel` against a real Slurm, on this host's node (slurm/cluster/local-cluster.sh,
started once per session by the `slurm_cluster` fixture; jobs across nodes: test_multinode.py)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helpers import run_cli
from slurm_helpers import job_args, mlflow_of, records, wait_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_dry_run_prints_the_requested_resources(tiny_data, tmp_path, capsys):
    assert run_cli("submit", "--dry-run", "--folder", tmp_path / "jobs", "--nodes", "1", "--tasks-per-node", "2",
                   "--cpus-per-task", "1", "--mem", "1G", "--time", "45", "--partition", "debug", "--name", "drytest",
                   *job_args(tiny_data)) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=2", "#SBATCH --cpus-per-task=1", "#SBATCH --mem=1GB",
                 "#SBATCH --time=45", "#SBATCH --partition=debug", "#SBATCH --job-name=drytest",
                 "#SBATCH --signal=USR2@120", "srun "):
        assert line in script, line
    assert not (tmp_path / "jobs").exists()  # a dry run writes nothing


def test_training_job_completes_and_logs_to_mlflow_then_jobs_logs_and_an_eval_job(tiny_data, tmp_path, capsys):
    root = tmp_path / "jobs"
    assert run_cli("submit", "--folder", root, "--time", "30", "--wait", *job_args(tiny_data)) == 0
    (rec,) = records(root)
    (job,) = rec["jobs"]
    folder = Path(rec["executor_folder"]).parent
    assert folder.stat().st_mode & 0o777 == 0o700 and root.stat().st_mode & 0o777 == 0o700
    client, run_id = mlflow_of(job["run_dir"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["slurm.job_id"] == job["job_id"]
    assert [m.step for m in client.get_metric_history(run_id, "curves/train_loss")] == [1, 2]
    assert {"subset/RGB/acc", "subset/R/acc", "subset/worst_subset_acc"} <= set(run.data.metrics)

    capsys.readouterr()
    wait_state(job["job_id"], {"COMPLETED"})
    assert run_cli("jobs", "--folder", root) == 0
    listing = capsys.readouterr().out
    assert job["job_id"] in listing and "COMPLETED" in listing and run_id in listing
    assert run_cli("logs", job["job_id"], "--folder", root) == 0
    assert "epoch 2/2" in capsys.readouterr().out

    report = tmp_path / "eval.json"
    model = Path(job["run_dir"]) / "model.pt"
    assert run_cli("submit", "--folder", root, "--time", "30", "--wait",
                   "--run", f"eval {model} --data {tiny_data / 'val'} --subsets RGB,G --json {report}") == 0
    assert list(json.loads(report.read_text())["subsets"]) == ["RGB", "G"]


def test_cancel_a_running_job(tiny_data, tmp_path, capsys):
    root = tmp_path / "jobs"
    assert run_cli("submit", "--folder", root, "--time", "30", *job_args(tiny_data, "train.epochs=200")) == 0
    (job,) = records(root)[0]["jobs"]
    wait_state(job["job_id"], {"RUNNING"})
    assert run_cli("cancel", job["job_id"], "--folder", root) == 0
    assert wait_state(job["job_id"], {"CANCELLED"}) == "CANCELLED"


def queued_job_ids():
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("args, message", [
    (["--partition", "nosuch"], "unknown partition 'nosuch': this cluster has debug"),
    (["--time", "2"], "walltime --time 2 min is too short"),
    (["--array", "BAD"], "array element 1 of"),
    (["--mem", "lots"], "--mem 'lots' is not a size"),
    # the 1-node default partition cannot hold 2 nodes (Slurm would pend it, reason PartitionNodeLimit): refused
    (["--nodes", "2"], "the default partition debug cannot hold the job (2 nodes, 1 task x 1 CPU per node, 60 min): "
                       "it has 1 node; it fits partition multi (--partition multi)"),
    (["--cpus-per-task", "1000", "--partition", "debug,multi"],
     "the job needs 1000 CPUs (1 task x 1000 CPUs) per node"),
])
def test_bad_input_is_one_line_and_submits_nothing(tiny_data, tmp_path, capsys, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {train.lr: 0.01}\n- {train.lerning_rate: 0.1}\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    before = queued_job_ids()
    assert run_cli("submit", "--folder", tmp_path / "jobs", *args, *job_args(tiny_data)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list((tmp_path / "jobs").glob("*/submission.json"))
    # a job of an earlier test may leave the queue meanwhile (COMPLETING): only a new job id would be a submission
    assert queued_job_ids() <= before


def test_wait_says_why_a_job_has_not_started(tmp_path, capsys, monkeypatch):
    """--wait on a job that cannot start (submitted held): Slurm's pending reason after PENDING_FIRST_S, again
    every PENDING_EVERY_S (a minute and 5 minutes for users, about a second here); cancelled after the second."""
    import submitit

    from dynconv.slurm import submit as slurm_submit
    from dynconv.slurm.executor import Resources

    params = Resources.generic_parameters  # sbatch --hold: pending (reason JobHeldUser) until released
    monkeypatch.setattr(Resources, "generic_parameters",
                        lambda res: {**params(res), "slurm_additional_parameters": {"hold": True}})
    monkeypatch.setattr(slurm_submit, "PENDING_FIRST_S", 1.0)
    monkeypatch.setattr(slurm_submit, "PENDING_EVERY_S", 1.5)
    monkeypatch.setattr(submitit.SlurmJob, "_results_timeout_s", 0)  # a cancelled job leaves no result to wait for
    said, say = [], slurm_submit._say

    def cancel_after_two(line: str) -> None:
        say(line)
        said.append(line)
        if len(said) == 2:
            subprocess.run(["scancel", re.search(r"job (\d+)", line).group(1)], check=True)

    monkeypatch.setattr(slurm_submit, "_say", cancel_after_two)
    root = tmp_path / "jobs"
    assert run_cli("submit", "--folder", root, "--time", "30", "--wait", "--run", "eval never-run.pt") == 1
    out, err = capsys.readouterr()
    (job,) = records(root)[0]["jobs"]
    jid = job["job_id"]
    lines = [ln for ln in out.splitlines() if "still pending" in ln]
    assert len(lines) == 2, out
    for line in lines:
        assert re.fullmatch(rf"dynconv: job {jid} still pending after \d s: Slurm's reason is JobHeldUser "
                            rf"\(held: scontrol release {jid} lets it start\)", line), line
    assert f"job {jid} failed" in err
    assert wait_state(jid, {"CANCELLED"}) == "CANCELLED"


def test_local_executor_runs_the_same_job_without_slurm(tiny_data, tmp_path, capsys):
    root = tmp_path / "jobs"
    assert run_cli("submit", "--cluster", "local", "--folder", root, "--time", "30", *job_args(tiny_data)) == 0
    assert "finished: mean subset accuracy" in capsys.readouterr().out
    (rec,) = records(root)
    (job,) = rec["jobs"]
    client, run_id = mlflow_of(job["run_dir"])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert run_cli("jobs", "--folder", root) == 0
    assert f"{job['job_id']}  COMPLETED  local" in capsys.readouterr().out
