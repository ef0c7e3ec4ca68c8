"""Jobs across nodes, on the local cluster's two compute hosts ``dcnode1``/``dcnode2`` (partition ``multi``):
each a slurmd in its own network and UTS namespace, joined by the cluster script's bridge, so a rank on one
reaches a rank on the other only over that bridge (slurm/cluster/local-cluster.sh up --nodes 2, started once
per session by the ``slurm_cluster`` fixture)."""
from __future__ import annotations

import json
import pickle
import re
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


def test_a_sweep_over_two_nodes_runs_trials_on_both(tiny_data, tmp_path, capsys):
    """`dynconv sweep --on-slurm --nodes 2`: the Ray head on the first node, a worker on the second; one trial
    per node (each node has one CPU), each trial's MLflow run names its host."""
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text("train.lr: {grid: [0.01, 0.003]}\n")
    out = tmp_path / "sweep"
    assert run_cli("sweep", "--on-slurm", "--wait", "--folder", tmp_path / "jobs", "--time", "30", "--nodes", "2",
                   "--partition", "multi", "--cpus-per-task", "1", "--space", space, "--search", "grid",
                   "--scheduler", "fifo", "--out", out, *job_args(tiny_data, "train.epochs=1")) == 0
    printed = capsys.readouterr().out
    assert "finished, best config" in printed and "| trial |" in printed
    assert (out / "best.yaml").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and len(summary["rows"]) == 2
    client = MlflowClient(summary["tracking_uri"])
    children = client.search_runs([client.get_run(summary["parent_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert len(children) == 2 and all("subset/worst_subset_acc" in r.data.metrics for r in children)
    assert sorted(r.data.tags["dynconv.host"] for r in children) == sorted(NODES)
    (job,) = records(tmp_path / "jobs")[0]["jobs"]
    assert wait_state(job["job_id"], {"COMPLETED"}) == "COMPLETED"


def test_an_array_over_two_nodes_gives_three_tagged_mlflow_runs_in_one_store(tiny_data, tmp_path):
    """Three elements, two at a time: one on each node (one CPU each), all logging to one sqlite file."""
    root = tmp_path / "jobs"
    array = tmp_path / "array.yaml"
    array.write_text("- {dropout.kind: uniform_subsets}\n- {dropout.kind: constant, dropout.p: 0.3}\n"
                     "- {dropout: {kind: weighted_subsets, weights: {RGB: 2, R: 1}}}\n")
    assert run_cli("submit", "--folder", root, "--time", "30", "--array", array, "--max-parallel", "2", "--wait",
                   "--partition", "multi", *job_args(tiny_data, "train.epochs=1")) == 0
    (rec,) = records(root)
    assert len(rec["jobs"]) == 3
    array_ids, kinds, hosts, stores = set(), [], set(), set()
    for job in rec["jobs"]:
        client, run_id = mlflow_of(job["run_dir"])
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "subset/RGB/acc" in run.data.metrics
        array_ids.add(run.data.tags["slurm.array_job_id"])
        kinds.append(run.data.params["dropout.kind"])
        hosts.add(run.data.tags["dynconv.host"])
        stores.add(client.tracking_uri)
    assert len(array_ids) == 1 and kinds == ["uniform_subsets", "constant", "weighted_subsets"]
    assert hosts == set(NODES) and len(stores) == 1


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
