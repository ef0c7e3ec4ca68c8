"""Jobs across nodes, on the local cluster's two compute hosts ``dcnode1``/``dcnode2`` (partition ``multi``):
each a slurmd in its own network and UTS namespace, joined by the cluster script's bridge, so a rank on one
reaches a rank on the other only over that bridge (slurm/cluster/local-cluster.sh up --nodes 2, started once
per session by the ``slurm_cluster`` fixture)."""
from __future__ import annotations

import json
import pickle
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import run_cli
from slurm_helpers import CLUSTER_SCRIPT, job_args, mlflow_of, records, wait_for_file, wait_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

NODES = {"dcnode1": "10.77.0.11", "dcnode2": "10.77.0.12"}
ACROSS = ("--nodes", "2", "--tasks-per-node", "1", "--partition", "multi")


def cluster(*args: str) -> str:
    r = subprocess.run(["bash", str(CLUSTER_SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _logs(rec: dict, job_id: str) -> list[str]:
    return [(Path(rec["executor_folder"]) / f"{job_id}_{task}_log.out").read_text() for task in (0, 1)]


def test_the_compute_nodes_are_hosts_of_their_own():
    status = cluster("status")
    assert all(f"node {n} idle" in status for n in NODES), status
    out = subprocess.run(["srun", "--partition", "multi", "--nodes", "2", "--ntasks", "2", "--label", "sh", "-c",
                          'echo "$(hostname) $(hostname -i) $(ip -o -4 addr show eth0 | wc -l)"'],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    # task i on node i: its hostname, the address that name resolves to, one interface of its own on the bridge
    assert sorted(out.split("\n")[:2]) == [f"{i}: dcnode{i + 1} {NODES[f'dcnode{i + 1}']} 1" for i in (0, 1)], out
    hosts = Path("/etc/hosts").read_text()
    assert all(re.search(rf"^{re.escape(a)} {n} ", hosts, re.M) for n, a in NODES.items()), hosts


def _two_task_job(root: Path, data: Path, *resources: str) -> tuple[dict, list, list[str]]:
    """Submit the tiny training as a 2-task job and wait: its record, both tasks' results and logs."""
    assert run_cli("submit", "--folder", root, "--time", "30", *resources, "--wait", *job_args(data)) == 0
    (rec,) = records(root)
    (job,) = rec["jobs"]
    logs = Path(rec["executor_folder"])
    results = [pickle.loads((logs / f"{job['job_id']}_{t}_result.pkl").read_bytes()) for t in (0, 1)]
    assert [r[0] for r in results] == ["success", "success"]
    assert sorted(r[1]["rank"] for r in results) == [0, 1] and all(r[1]["world"] == 2 for r in results)
    out = _logs(rec, job["job_id"])
    assert "data-parallel over 2 processes (gloo)" in out[0]
    return job, results, out


def test_ddp_over_two_nodes_trains_the_weights_of_two_processes_on_one_node(tiny_data, tmp_path, monkeypatch):
    # submitted from inside another distributed process: sbatch exports these, and the jobs must use their own
    for key, value in (("MASTER_ADDR", "10.255.255.1"), ("MASTER_PORT", "1"), ("RANK", "5"), ("WORLD_SIZE", "8")):
        monkeypatch.setenv(key, value)
    # 2 tasks on this host's node (partition debug), then one task on each compute host
    one, _, _ = _two_task_job(tmp_path / "one", tiny_data, "--tasks-per-node", "2")
    job, results, out = _two_task_job(tmp_path / "across", tiny_data, *ACROSS)
    assert sorted((r[1]["rank"], r[1]["host"]) for r in results) == [(0, "dcnode1"), (1, "dcnode2")]
    for rank, text in enumerate(out):  # each rank names its host and address; both meet at the first node
        assert re.search(rf"rank {rank}/2 on dcnode{rank + 1} \({NODES[f'dcnode{rank + 1}']}\), node {rank}/2; "
                         r"rendezvous dcnode1:\d+", text), text
    # bitwise the same weights: only the network between the two processes differs
    across = torch.load(Path(job["run_dir"]) / "model.pt", weights_only=True)["model"]
    local = torch.load(Path(one["run_dir"]) / "model.pt", weights_only=True)["model"]
    assert across.keys() == local.keys() and all(torch.equal(across[k], local[k]) for k in local)


def test_a_two_node_job_survives_a_preemption_and_a_node_that_dies(tiny_data, tmp_path):
    """USR2 to a 2-node job: both ranks stop at one step, one checkpoint, requeue, resume. Then one node dies
    (every process on it killed, the node down): Slurm requeues the job, it waits for the node, and resumes
    from the last checkpoint. One MLflow run throughout, every epoch in its history once."""
    root = tmp_path / "jobs"
    assert run_cli("submit", "--folder", root, "--time", "30", *ACROSS,
                   *job_args(tiny_data, "train.epochs=6", "train.batch_size=16")) == 0
    (rec,) = records(root)
    (job,) = rec["jobs"]
    jid, ckpts = job["job_id"], Path(job["run_dir"]) / "checkpoints"
    wait_for_file(ckpts / "epoch_0001.pt", "training did not reach epoch 1")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    deadline = time.time() + 240
    while time.time() < deadline and "resuming at" not in _logs(rec, jid)[0]:
        time.sleep(0.5)
    stops = [re.findall(r"pre-empted at epoch (\d+) step (\d+)", t) for t in _logs(rec, jid)]
    assert len(stops[0]) == 1 and stops[0] == stops[1], stops  # every rank at the same step, once

    wait_for_file(ckpts / "epoch_0003.pt", "the requeued job did not reach epoch 3", timeout=300)
    cluster("kill-node", "dcnode2")
    wait_state(jid, {"PENDING", "REQUEUED"}, timeout=120)  # Slurm requeued the job of the dead node
    cluster("start-node", "dcnode2")
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=420) == "COMPLETED"

    log = _logs(rec, jid)[0]
    assert log.count("resuming at") == 2, log
    client, run_id = mlflow_of(job["run_dir"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("curves/train_loss", "curves/val_acc"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4, 5, 6], key
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_a_sweep_over_two_nodes_runs_trials_on_both_and_survives_a_requeue(tiny_data, tmp_path):
    """`dynconv sweep --on-slurm --nodes 2`: the Ray head on the first node, a worker on the second; trials on
    both nodes (each has one CPU), each trial's MLflow run names its host. Pre-empted (USR2) once a trial has
    finished, the job is requeued and the sweep continues from Ray Tune's saved state: the finished trial is not
    run again, every trial ends with one MLflow run and each epoch in its history once."""
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {grid: [0.01, 0.003, 0.001]}\n")
    out, root = tmp_path / "sweep", tmp_path / "jobs"
    assert run_cli("sweep", "--on-slurm", "--folder", root, "--time", "30", "--nodes", "2",
                   "--partition", "multi", "--cpus-per-task", "1", "--space", space, "--search", "grid",
                   "--scheduler", "fifo", "--out", out, *job_args(tiny_data, "train.epochs=2")) == 0
    (job,) = records(root)[0]["jobs"]
    jid = job["job_id"]
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "trials").glob("*/eval.json")):
        time.sleep(0.5)
    finished = {p.parent.name: p.stat().st_mtime_ns for p in (out / "trials").glob("*/eval.json")}
    assert finished and len(finished) < 3, finished  # one or two trials done, one still to run
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    wait_state(jid, {"PENDING", "REQUEUED"}, timeout=120)
    assert wait_state(jid, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=420) == "COMPLETED"

    log = (Path(records(root)[0]["executor_folder"]) / f"{jid}_0_log.out").read_text()
    assert f"resuming the sweep in {out}" in log, log[-3000:]
    assert (out / "best.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and len(summary["rows"]) == 3
    assert all(r["finished"] and r["epochs"] == 2 for r in summary["rows"])
    assert {t: (out / "trials" / t / "eval.json").stat().st_mtime_ns for t in finished} == finished  # not re-run
    client = MlflowClient(summary["tracking_uri"])
    children = client.search_runs([client.get_run(summary["parent_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert len(children) == 3 and all("subset/worst_subset_acc" in r.data.metrics for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "curves/train_loss")] == [1, 2]
    assert {r.data.tags["dynconv.host"] for r in children} == set(NODES)
    assert client.get_run(summary["parent_run_id"]).info.status == "FINISHED"


def _running_at_once(job_id: str) -> tuple[int, set[str]]:
    """The most elements of array ``job_id`` that ran at the same time (from sacct's start and end times),
    and the nodes they ran on."""
    rows = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "Start,End,NodeList", "-j", job_id],
                          capture_output=True, text=True, check=True).stdout.split()
    spans = [r.split("|") for r in rows]
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans], key=lambda t: (t[0], t[1]))
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most, {n for _, _, n in spans}


def test_an_array_of_twenty_fills_the_cluster_and_logs_twenty_complete_runs_to_one_store(tiny_data, tmp_path):
    """20 elements over every node (partitions debug,multi: this host's 2 CPUs and one CPU on each compute
    host), at most 4 at once (--max-parallel 4): all COMPLETED, and 20 MLflow runs in one sqlite file shared by
    all of them, each with its own settings and its whole metric history — no record lost to the database
    being locked by another element."""
    root = tmp_path / "jobs"
    kinds = ["{dropout.kind: uniform_subsets}", "{dropout.kind: constant, dropout.p: 0.3}",
             "{dropout: {kind: weighted_subsets, weights: {RGB: 2, R: 1}}}", "{dropout.kind: none}"]
    elements = [f"- {{train.seed: {i}, {kinds[i % 4][1:]}" for i in range(20)]
    array = tmp_path / "array.yaml"
    array.write_text("\n".join(elements) + "\n")
    assert run_cli("submit", "--folder", root, "--time", "30", "--array", array, "--max-parallel", "4", "--wait",
                   "--partition", "debug,multi", *job_args(tiny_data, "model.norm=shared", "tracking.log_model=false")) == 0
    (rec,) = records(root)
    assert len(rec["jobs"]) == 20
    array_id = rec["jobs"][0]["job_id"].split("_")[0]
    deadline, states = time.time() + 60, []
    while time.time() < deadline and states != ["COMPLETED"] * 20:  # accounting records the last ends a little later
        states = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", array_id], capture_output=True,
                                text=True, check=True).stdout.split()
        time.sleep(1)
    assert states == ["COMPLETED"] * 20, states
    most, nodes = _running_at_once(array_id)
    assert most == 4, most  # the cluster's 4 CPUs full, and never more than --max-parallel
    assert nodes == {socket.gethostname().split(".")[0], *NODES}, nodes  # this host's node and both others
    seen, stores, runs = [], set(), set()
    for job in rec["jobs"]:
        client, run_id = mlflow_of(job["run_dir"])
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and {"subset/RGB/acc", "subset/R/acc"} <= set(run.data.metrics)
        for key in ("curves/train_loss", "curves/val_acc"):
            assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], (job["job_id"], key)
        assert run.data.tags["slurm.array_job_id"] == array_id
        seen.append((int(run.data.params["train.seed"]), run.data.params["dropout.kind"]))
        stores.add(client.tracking_uri)
        runs.add(run_id)
    kind_of = ["uniform_subsets", "constant", "weighted_subsets", "none"]
    assert sorted(seen) == [(i, kind_of[i % 4]) for i in range(20)]
    assert len(stores) == 1 and len(runs) == 20
    assert len(client.search_runs([run.info.experiment_id], max_results=100)) == 20


def test_down_removes_every_namespace_link_address_and_hosts_line_it_made():
    cluster("down")
    try:
        assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                    if n.startswith("dcnode")]
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
        assert "dcbr0" not in links and "dcveth" not in links, links
        addrs = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
        assert "10.77.0." not in addrs, addrs
        assert "dynconv local-cluster" not in Path("/etc/hosts").read_text()
    finally:
        cluster("up", "--nodes", "2")  # the session's cluster, for the tests after this one
