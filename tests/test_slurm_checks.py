"""What `dynconv submit` checks before anything reaches the scheduler, without a cluster: sizes, walltimes,
partitions (from a stand-in for `sinfo`), and the sbatch script of a dry run."""
from __future__ import annotations

import pytest

from dynconv.errors import DynconvError
from dynconv.slurm import executor, partitions
from dynconv.slurm.executor import Resources, mem_gb
from dynconv.slurm.partitions import check_against_cluster
from helpers import run_cli

# `sinfo -h -N -o "%P|%N|%c|%m|%G|%l|%s"`: a node per line and partition
SINFO = ("debug*|c1|8|32000|(null)|1-00:00:00|1-infinite\n"
         "gpu|g1|16|64000|gpu:a100:4(S:0-1)|2:00:00|1-infinite\ngpu|g2|16|64000|gpu:a100:4(S:0-1)|2:00:00|1-infinite\n"
         "long|c2|8|32000|(null)|UNLIMITED|1-infinite\n")


@pytest.fixture
def fake_sinfo(monkeypatch):
    calls = []

    def query(argv):
        calls.append(argv)
        assert argv[0] == "sinfo"
        return SINFO

    monkeypatch.setattr(executor, "_slurm_query", query)
    return calls


@pytest.mark.parametrize("text, gb", [("16G", 16), ("512M", 0.5), ("1T", 1024), ("2048", 2), (" 8 GB ", 8), (None, None)])
def test_mem_sizes(text, gb):
    assert mem_gb(text) == gb


def test_bad_mem_is_one_line():
    with pytest.raises(DynconvError, match="--mem 'lots' is not a size: use e.g. 16G or 512M"):
        mem_gb("lots")


@pytest.mark.parametrize("limit, minutes", [("30", 30), ("2:00:00", 120), ("1-00:00:00", 1440), ("0:30", 0.5),
                                            ("UNLIMITED", None), ("infinite", None)])
def test_slurm_time_limits(limit, minutes):
    assert partitions._minutes(limit) == minutes


def test_walltime_must_leave_room_for_the_checkpoint_signal():
    with pytest.raises(DynconvError, match="walltime --time 2 min is too short.*use --time 3 or more"):
        Resources(time_min=2, signal_delay_s=120).check()
    Resources(time_min=3, signal_delay_s=120).check()
    with pytest.raises(DynconvError, match="--nodes must be at least 1"):
        Resources(nodes=0).check()


def test_partition_and_its_limit_are_checked(fake_sinfo):
    check_against_cluster(Resources(time_min=60, partition="gpu"))
    check_against_cluster(Resources(time_min=10_000, partition="long"))
    with pytest.raises(DynconvError, match="unknown partition 'nosuch': this cluster has debug, gpu, long"):
        check_against_cluster(Resources(partition="nosuch"))
    with pytest.raises(DynconvError, match="partition gpu cannot hold .*--time 180 min exceeds its limit of 2:00:00"):
        check_against_cluster(Resources(time_min=180, partition="gpu"))
    with pytest.raises(DynconvError, match="default partition debug cannot hold .*exceeds its limit .* fits partition "
                                           "long"):
        check_against_cluster(Resources(time_min=2000))
    res = Resources(time_min=60, partition="gpu,long")
    assert check_against_cluster(res) == [] and res.partition == "gpu,long"  # Slurm's list: the first with room
    with pytest.raises(DynconvError, match="unknown partition 'nosuch': this cluster has"):
        check_against_cluster(Resources(time_min=60, partition="gpu,nosuch"))
    res = Resources(time_min=180, partition="long,gpu")  # of a list, the one whose limit is too short is dropped
    assert check_against_cluster(res) == [("gpu", "--time 180 min exceeds its limit of 2:00:00")]
    assert res.partition == "long"


def test_one_task_per_gpu_and_the_scheduler_keywords():
    params = Resources(nodes=2, gpus_per_node=4, tasks_per_node=1, mem="16G", partition="gpu", account="proj",
                       qos="high", max_parallel=3).generic_parameters()
    assert params["tasks_per_node"] == 4 and params["gpus_per_node"] == 4 and params["mem_gb"] == 16
    assert (params["slurm_partition"], params["slurm_account"], params["slurm_qos"]) == ("gpu", "proj", "high")
    assert params["slurm_array_parallelism"] == 3 and params["slurm_signal_delay_s"] == 120


def test_dry_run_prints_the_sbatch_script_and_writes_nothing(fake_sinfo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dynconv.slurm.executor.default_cluster", lambda: "slurm")
    root = tmp_path / "jobs"
    assert run_cli("submit", "--dry-run", "--cluster", "slurm", "--folder", root, "--nodes", "2", "--gpus-per-node",
                   "2", "--mem", "8G", "--time", "90", "--partition", "gpu", "--name", "dry", "--config",
                   tmp_path / "missing.yaml") == 2  # the config is validated first
    assert "config file" in capsys.readouterr().err
    from helpers import CONFIG

    assert run_cli("submit", "--dry-run", "--cluster", "slurm", "--folder", root, "--nodes", "2", "--gpus-per-node",
                   "2", "--mem", "8G", "--time", "90", "--partition", "gpu", "--name", "dry", "--config", CONFIG) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2", "#SBATCH --mem=8GB",
                 "#SBATCH --time=90", "#SBATCH --partition=gpu", "#SBATCH --job-name=dry", "#SBATCH --signal=USR2@120",
                 "srun "):
        assert line in script, line
    assert not root.exists()
