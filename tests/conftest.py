"""Shared fixtures: a tiny synthetic dataset (folders and .beton files), made once per test session."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import hypothesis  # noqa: F401  (import early: hypothesis' pytest plugin otherwise imports it at the very end
#                    of a session, deep in pytest's stack, where CPython 3.11.7 can fail with "AST constructor
#                    recursion depth mismatch" while rewriting its modules)
import pytest

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from test runs
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # parallel workers share the cores: threads per worker (and its children)
    # beyond their share only spin against each other (measured: the small-data norm test takes 200 s with one
    # thread and 194 s with two on 2 cores, alone)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))


# Parallel runs (`make test`: pytest-xdist): a module's tests stay on one worker, so a module fixture (a trained
# checkpoint, a Ray instance, a sweep) is made once; the tests of the local Slurm cluster (these modules) all run
# on one worker, which starts the cluster and stops it at its end. Modules start longest first (the order only
# decides how evenly the workers finish; the seconds are a 2-core run's).
SLURM_MODULES = ("tests/test_multinode.py", "tests/test_slurm.py")
GROUP_SECONDS = {"slurm": 530, "tests/test_deepspeed.py": 330, "tests/test_sweeps.py": 270,
                 "tests/test_reliability.py": 160, "tests/test_tracking_server.py": 130, "tests/test_mixture.py": 130,
                 "tests/test_norm.py": 105, "tests/test_cli.py": 80, "tests/test_wheelhouse.py": 80,
                 "tests/test_gpu_recipe.py": 50,
                 "tests/test_ablation.py": 45, "tests/test_ddp.py": 40}


def test_group(nodeid: str) -> str:
    """The unit of work of a test: its module, or ``slurm`` for the local cluster's modules."""
    module = nodeid.split("::", 1)[0]
    return "slurm" if module in SLURM_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):  # whole groups to a worker, in collection order (the sort below)
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    config.option.loadscopereorder = False
    return ByGroup(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -GROUP_SECONDS.get(test_group(item.nodeid), 0))  # stable: a module's order is kept


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``tmp_path_factory.mktemp`` for module-scoped fixtures, whose folders are removed after the module when
    none of its tests failed (as pyproject's ``tmp_path_retention_policy`` does for ``tmp_path``): a training
    run's checkpoints are ~90 MB each, and the whole suite kept would need tens of GB of disk."""
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """4 classes × (80 train, 16 val) images at 32 px, plus train.beton / val.beton."""
    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton
    from dynconv.data.synth import write_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    write_dataset(root, num_classes=4, train_per_class=80, val_per_class=16, size=32, seed=0)
    for split in ("train", "val"):
        write_beton(scan_image_folder(root / split), root / f"{split}.beton", size=32, store="raw", num_workers=1)
    return root


@pytest.fixture(scope="session")
def textures_small(tmp_path_factory) -> Path:
    """The harder synthetic set in the small-data regime: 6 classes (3 orientations x 2 scales) x 60 training
    and 30 validation images at 32 px, with .beton files holding the folder loader's pixels."""
    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton
    from dynconv.data.synth import write_dataset

    root = tmp_path_factory.mktemp("textures") / "data"
    write_dataset(root, num_classes=6, train_per_class=60, val_per_class=30, size=32, seed=0, kind="textures")
    for split in ("train", "val"):
        write_beton(scan_image_folder(root / split), root / f"{split}.beton", size=32, store="raw", num_workers=1)
    return root


def _fixtures_of(session, module: str) -> set[str]:
    return {f for item in session.items if item.nodeid.split("::")[0] == module for f in item.fixturenames}


@pytest.fixture(scope="session")
def slurm_cluster(request):
    """A real Slurm cluster on this machine (slurm/cluster/local-cluster.sh up --nodes 2: installs slurm-wlm,
    munge and MariaDB when missing): this host's node in partition ``debug`` (the default) and two compute
    hosts ``dcnode1``/``dcnode2``, each in its own network namespace, in partition ``multi``. Left running if it
    was already up; stopped (namespaces and bridge removed) at the end if this session started it."""
    import subprocess

    from slurm_helpers import CLUSTER_SCRIPT

    requested_by = [m for m in {item.nodeid.split("::")[0] for item in request.session.items}
                    if m not in SLURM_MODULES and "slurm_cluster" in _fixtures_of(request.session, m)]
    if requested_by:  # parallel runs keep every user of the cluster on one worker: a module must be listed
        pytest.fail(f"{requested_by[0]} uses the local Slurm cluster: add it to SLURM_MODULES in tests/conftest.py")
    was_up = subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(CLUSTER_SCRIPT), "up", "--nodes", "2"], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        tail = " | ".join((r.stdout + r.stderr).strip().splitlines()[-3:])
        pytest.fail(f"the local Slurm cluster did not start: {tail}")
    yield
    if not was_up:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "down"], capture_output=True, timeout=180)


@pytest.fixture(autouse=True)
def _fast_tier_stays_in_process(request, monkeypatch):
    """Tests not marked ``slow`` (``make test-fast``) run in this process: starting another Python, a Slurm
    command, a shell script or a mount there is an error that says to mark the test slow, so the markers
    stay accurate (libraries' own quick calls, such as ``uname``, are left alone)."""
    if request.node.get_closest_marker("slow") is not None:
        return
    import subprocess
    import sys

    heavy = {"python", "python3", Path(sys.executable).name, "bash", "sh", "mount", "sbatch", "srun", "sinfo",
             "squeue", "sacct", "scancel", "scontrol", "ray", "mlflow", "torchrun", "deepspeed"}
    popen = subprocess.Popen

    def guarded(args, *a, **kw):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if Path(os.fsdecode(argv[0]).split()[0]).name in heavy:
            raise AssertionError(f"{request.node.nodeid} starts {argv[0]!r}: mark it @pytest.mark.slow")
        return popen(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", guarded)
