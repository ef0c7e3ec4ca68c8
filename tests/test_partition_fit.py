"""Whether a partition can hold a job, from canned `sinfo` outputs (no cluster): nodes against MaxNodes and the
partition's nodes, tasks x CPUs, GPUs (gres) and memory per node, Slurm's comma list (those that cannot are
dropped), the one-line refusal naming the partitions that can; and the pending reasons `--wait` prints, on a
fake clock."""
from __future__ import annotations

import types

import pytest

from dynconv.errors import DynconvError
from dynconv.slurm import executor
from dynconv.slurm import submit as slurm_submit
from dynconv.slurm.executor import Resources
from dynconv.slurm.partitions import check_against_cluster, fit_partitions, gpu_count, parse_sinfo
from helpers import CONFIG, run_cli

# `sinfo -h -N -o "%P|%N|%c|%m|%G|%l|%s"` on the local cluster (slurm/cluster/local-cluster.sh up --nodes 2)
LOCAL = ("multi|dcnode1|1|10868|(null)|infinite|1-infinite\n"
         "multi|dcnode2|1|10868|(null)|infinite|1-infinite\n"
         "debug*|vm|2|21736|(null)|infinite|1-infinite\n")
# a site: CPU nodes (MaxNodes 2), GPU nodes of 4 and 8 GPUs (one with less memory), a 1-node partition with a limit
SITE = ("cpu*|c1|32|128000|(null)|2-00:00:00|1-2\ncpu|c2|32|128000|(null)|2-00:00:00|1-2\n"
        "cpu|c3|32|128000|(null)|2-00:00:00|1-2\n"
        "gpu|g1|64|512000|gpu:a100:4(S:0-1)|1-00:00:00|1-infinite\n"
        "gpu|g2|64|512000|gpu:a100:8(S:0,1),mps:400|1-00:00:00|1-infinite\n"
        "gpu|g3|64|256000|gpu:a100:8(S:0,1)|1-00:00:00|1-infinite\n"
        "short|c1|32|128000|(null)|30:00|1-infinite\n")


def fit(sinfo: str, **res):
    return fit_partitions(parse_sinfo(sinfo), Resources(**res))


def refusal(sinfo: str, **res) -> str:
    with pytest.raises(DynconvError) as e:
        fit(sinfo, **res)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_sinfo_lines_become_partitions_with_their_nodes():
    parts = parse_sinfo(SITE)
    assert list(parts) == ["cpu", "gpu", "short"]
    assert parts["cpu"].default and not parts["gpu"].default
    assert (parts["cpu"].min_nodes, parts["cpu"].max_nodes, parts["gpu"].max_nodes) == (1, 2, None)
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in parts["gpu"].nodes] == [
        ("g1", 64, 512000, 4), ("g2", 64, 512000, 8), ("g3", 64, 256000, 8)]
    assert parts["short"].time_limit == "30:00" and [n.name for n in parts["short"].nodes] == ["c1"]
    with pytest.raises(DynconvError, match="unexpected sinfo output"):
        parse_sinfo("debug* infinite\n")  # the old two-field format


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:4(S:0-1)", 4), ("gpu:2,mps:200", 2),
                                        ("gpu:a100:2,gpu:v100:2", 4), ("gpu:a100:8(S:0,1),mps:400", 8),
                                        ("mps:100", 0), ("shard:gpu:4", 0)])
def test_gpus_of_a_gres(gres, gpus):
    assert gpu_count(gres) == gpus


def test_what_fits_is_accepted_as_given():
    assert fit(LOCAL, nodes=2, partition="multi") == (["multi"], [])
    assert fit(LOCAL, tasks_per_node=2) == (["debug"], [])  # the default: 2 CPUs
    assert fit(SITE, nodes=2, gpus_per_node=8, partition="gpu") == (["gpu"], [])
    assert fit(SITE, nodes=2, cpus_per_task=16, tasks_per_node=2) == (["cpu"], [])


def test_more_nodes_than_maxnodes():
    msg = refusal(SITE, nodes=3)
    assert msg.startswith("the default partition cpu cannot hold the job (3 nodes, 1 task x 1 CPU per node, 60 min): "
                          "it allows at most 2 nodes per job (MaxNodes); it fits partition gpu (--partition gpu)"), msg


def test_more_nodes_than_the_partition_has():
    # the issue: 2 nodes without --partition on the local cluster pended in debug (PartitionNodeLimit)
    assert refusal(LOCAL, nodes=2) == ("the default partition debug cannot hold the job (2 nodes, 1 task x 1 CPU per "
                                       "node, 60 min): it has 1 node; it fits partition multi (--partition multi)")
    assert "partition short cannot hold the job" in refusal(SITE, nodes=2, partition="short")


def test_tasks_times_cpus_per_task_against_the_cpus_of_a_node():
    msg = refusal(LOCAL, nodes=2, tasks_per_node=2, partition="multi")
    assert msg == ("partition multi cannot hold the job (2 nodes, 2 tasks x 1 CPU per node, 60 min): its nodes have at "
                   "most 1 CPU, the job needs 2 CPUs (2 tasks x 1 CPU) per node; no other partition can either "
                   "(debug: 1 node of 2 CPUs)")
    assert refusal(SITE, tasks_per_node=4, cpus_per_task=16).endswith(
        "its nodes have at most 32 CPUs, the job needs 64 CPUs (4 tasks x 16 CPUs) per node; it fits partition gpu "
        "(--partition gpu)")
    # one task per GPU: 8 GPUs x 16 CPUs = 128 CPUs per node
    assert "the job needs 128 CPUs (8 tasks x 16 CPUs) per node" in refusal(SITE, gpus_per_node=8, cpus_per_task=16,
                                                                           partition="gpu")


def test_gpus_per_node_against_the_gres():
    assert "its nodes have no GPUs, the job needs 1 GPU per node; it fits partition gpu (--partition gpu)" in \
        refusal(SITE, gpus_per_node=1)
    assert fit(SITE, nodes=2, gpus_per_node=8, partition="gpu")[0] == ["gpu"]
    assert refusal(SITE, nodes=3, gpus_per_node=8, partition="gpu").startswith(
        "partition gpu cannot hold the job (3 nodes, 8 tasks x 1 CPU per node, 8 GPUs per node, 60 min): only 2 nodes "
        "of its 3 have 8 GPUs; no other partition can either (cpu: 3 nodes of 32 CPUs, MaxNodes 2, limit 2-00:00:00; "
        "short: 1 node of 32 CPUs, limit 30:00)")


def test_memory_per_node_and_nodes_that_have_each_but_not_all():
    assert "its nodes have at most 125G of memory, the job needs 200G of memory per node" in refusal(SITE, mem="200G")
    # g2 and g3 have 8 GPUs, g1 and g2 have 300G: only g2 has both
    assert "only 1 node of its 3 has 8 CPUs (8 tasks x 1 CPU) and 8 GPUs and 300G of memory" in \
        refusal(SITE, nodes=2, gpus_per_node=8, mem="300G", partition="gpu")


def test_the_time_limit():
    assert "partition short cannot hold the job (1 node, 1 task x 1 CPU per node, 45 min): --time 45 min exceeds " \
           "its limit of 30:00; it fits partitions cpu, gpu (--partition cpu,gpu, or one of them)" == \
        refusal(SITE, time_min=45, partition="short")


def test_a_list_keeps_those_that_fit_in_its_order():
    assert fit(LOCAL, nodes=2, partition="debug,multi") == (["multi"], [("debug", "it has 1 node")])
    assert fit(LOCAL, partition="multi,debug") == (["multi", "debug"], [])  # both: Slurm picks the first with room
    assert fit(SITE, gpus_per_node=4, partition="short,cpu,gpu")[0] == ["gpu"]
    msg = refusal(LOCAL, nodes=3, partition="debug,multi")
    assert msg == ("none of --partition debug,multi can hold the job (3 nodes, 1 task x 1 CPU per node, 60 min): "
                   "debug: it has 1 node; multi: it has 2 nodes; this cluster has no other partition")
    assert refusal(SITE, gpus_per_node=1, partition="cpu,short").endswith("it fits partition gpu (--partition gpu)")
    with pytest.raises(DynconvError, match="unknown partition 'nosuch': this cluster has debug, multi"):
        fit(LOCAL, partition="multi,nosuch")


def test_check_against_cluster_narrows_a_list_and_a_dry_run_shows_it(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(executor, "_slurm_query", lambda argv: calls.append(argv) or LOCAL)
    res = Resources(nodes=2, partition="debug,multi")
    assert check_against_cluster(res) == [("debug", "it has 1 node")] and res.partition == "multi"
    assert calls == [["sinfo", "-h", "-N", "-o", "%P|%N|%c|%m|%G|%l|%s"]]

    args = ["submit", "--dry-run", "--cluster", "slurm", "--folder", tmp_path / "jobs", "--config", CONFIG]
    assert run_cli(*args, "--nodes", "2", "--partition", "debug,multi") == 0
    out, err = capsys.readouterr()
    assert "#SBATCH --partition=multi\n" in out
    assert err == "dynconv: partition debug cannot hold the job (it has 1 node): submitting to multi\n"
    assert run_cli(*args, "--nodes", "2") == 2
    assert capsys.readouterr().err == (
        "dynconv: error: the default partition debug cannot hold the job (2 nodes, 1 task x 1 CPU per node, 60 min): "
        "it has 1 node; it fits partition multi (--partition multi)\n")
    assert not (tmp_path / "jobs").exists()


# ---- --wait: the pending reason, on a fake clock --------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeJob:
    def __init__(self, job_id: str, clock: FakeClock, ends: float):
        self.job_id, self.clock, self.ends = job_id, clock, ends

    def done(self) -> bool:
        return self.clock.now >= self.ends


def watch(monkeypatch, jobs, pending_at, **kw) -> list[tuple[float, str]]:
    """Run the --wait loop on a fake clock: ``pending_at(t)`` is squeue's {job id: reason} at time t."""
    clock = jobs[0].clock
    said = []
    monkeypatch.setattr(slurm_submit, "time", types.SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep))
    monkeypatch.setattr(slurm_submit, "_pending", lambda ids: pending_at(clock.now))
    monkeypatch.setattr(slurm_submit, "_say", lambda line: said.append((clock.now, line)))
    slurm_submit.wait_reporting_pending(jobs, **kw)
    return said


def test_a_pending_job_says_why_after_a_minute_then_every_few_minutes(monkeypatch):
    clock = FakeClock()
    said = watch(monkeypatch, [FakeJob("145", clock, ends=700)],
                 lambda t: {"145": "PartitionNodeLimit"} if t < 650 else {})
    assert [t for t, _ in said] == [60, 360]  # PENDING_FIRST_S, then every PENDING_EVERY_S
    assert said[0][1] == ("dynconv: job 145 still pending after 60 s: Slurm's reason is PartitionNodeLimit (the "
                          "partition cannot give it that many nodes: cancel it)")
    assert said[1][1].startswith("dynconv: job 145 still pending after 6 min: Slurm's reason is PartitionNodeLimit")


def test_intervals_are_parameters_and_a_requeued_job_counts_anew(monkeypatch):
    clock = FakeClock()

    def pending_at(t):  # pending 0-5 s, running, requeued at 20 s: pending again until 30 s
        return {"7": "JobHeldUser"} if t < 5 or 20 <= t < 30 else {}

    said = watch(monkeypatch, [FakeJob("7", clock, ends=40)], pending_at, first_s=2, every_s=2)
    assert [round(t) for t, _ in said] == [2, 4, 22, 24, 26, 28]
    assert said[0][1] == ("dynconv: job 7 still pending after 2 s: Slurm's reason is JobHeldUser (held: scontrol "
                          "release 7 lets it start)")


def test_an_array_reports_one_line_per_reason_and_nothing_once_started(monkeypatch):
    clock = FakeClock()
    jobs = [FakeJob(f"9_{i}", clock, ends=100) for i in range(6)]

    def pending_at(t):
        if t >= 50:
            return {}
        return {"9_2": "Resources", **{f"9_{i}": "JobArrayTaskLimit" for i in range(3, 6)}}

    said = watch(monkeypatch, jobs, pending_at, first_s=40, every_s=80)
    assert [line for _, line in said] == [
        "dynconv: job 9_2 still pending after 40 s: Slurm's reason is Resources (waiting for free nodes/CPUs/GPUs)",
        "dynconv: jobs 9_3, 9_4, 9_5 still pending after 40 s: Slurm's reason is JobArrayTaskLimit (--max-parallel "
        "elements of the array are running)"]
    assert watch(monkeypatch, [FakeJob("1", FakeClock(), ends=500)], lambda t: {}) == []  # running: nothing to say
