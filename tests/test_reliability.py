"""Fault injection and bad input across the toolkit: each fault, and what the user sees."""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynconv.channels import num_channels, parse_subset, parse_subsets, subset_name
from dynconv.errors import DynconvError
from dynconv.fileio import DiskFull
from dynconv.train.checkpoint import atomic_torch_save, load_checkpoint
from dynconv.train.runlock import RunLock
from dynconv.launch.config import Config, load_config
from helpers import assert_one_line_error, cli, cli_here, resume_args, run_cli, train_args

FUZZ = settings(max_examples=int(os.environ.get("DYNCONV_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


# ---- SIGKILL at many points, then resume=auto: bitwise equal to an uninterrupted run ------------------

@pytest.fixture(scope="module")
def reference_run(tiny_data, module_tmp):

    ref = module_tmp("ref") / "run"
    assert run_cli(*resume_args(tiny_data, ref, "train.every_steps=1", "train.keep_checkpoints=2")) == 0
    return torch.load(ref / "model.pt", weights_only=True)["model"]


# step 10 is an epoch's end; the last epoch's end is not a point: model.pt follows its checkpoint within
# milliseconds, and a watcher that shares the CPU with other work cannot kill inside that window reliably
POINTS = [(1, 2), (1, 5), (1, 9), (1, 10), (2, 1), (2, 3), (2, 4), (2, 6), (2, 7), (2, 8)]


@pytest.mark.slow
def test_sigkill_at_seeded_points_resumes_bitwise(tiny_data, tmp_path, reference_run):
    """One run SIGKILLed at each point in turn (step 10 = the epoch's end), each time resumed with
    resume=auto by a new process, the last resume running to the end: every kill leaves no model.pt, every
    resume reclaims the dead process's lock, and the final weights equal the uninterrupted run's bit for bit
    (a resume that went wrong at any point would change them)."""
    from dynconv.train.checkpoint import epoch_checkpoint

    run = tmp_path / "run"
    args = resume_args(tiny_data, run, "train.every_steps=1", "train.keep_checkpoints=2")
    for i, (epoch, step) in enumerate(POINTS):
        log = tmp_path / f"attempt{i}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "dynconv.launch", *args, *(["train.resume=auto"] if i else [])],
                                    stdout=subprocess.DEVNULL, stderr=out)
            target = epoch_checkpoint(run, epoch) if step == 10 else epoch_checkpoint(run, epoch, step)
            deadline = time.time() + 300
            while not target.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert target.exists(), f"killed before {target.name}: {log.read_text()[-500:]}"
        assert not (run / "model.pt").exists()
        assert i == 0 or "reclaiming stale lock" in log.read_text(), (epoch, step)
    last = cli(*args, "train.resume=auto")
    assert last.returncode == 0 and "reclaiming stale lock" in last.stderr, last.stderr[-500:]
    final = torch.load(run / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], reference_run[k]) for k in final)


# ---- disk full, loader crash, locks ----------------------------------------------------------------

def test_disk_full_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"v": torch.ones(3)}, path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull, match="no space left .* previous version is intact"):
        atomic_torch_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


@pytest.mark.slow
def test_real_small_filesystem_fills_up(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the monkeypatched test covers it")
    try:
        atomic_torch_save({"v": torch.ones(10)}, mnt / "ckpt.pt")
        with pytest.raises(DiskFull):
            atomic_torch_save({"v": torch.ones(1_000_000)}, mnt / "ckpt.pt")  # 4 MB into 1 MB
        assert torch.equal(torch.load(mnt / "ckpt.pt", weights_only=True)["v"], torch.ones(10))
    finally:
        subprocess.run(["umount", str(mnt)])


_CRASHING_LOADER = """
import os, signal, sys
import torch
from dynconv.data.loaders import FolderSource
from dynconv.errors import DynconvError

class Crashing(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        if i == 20:
            os.kill(os.getpid(), signal.SIGKILL)  # the worker process dies
        return torch.zeros(3, 4, 4, dtype=torch.uint8), 0

loader = torch.utils.data.DataLoader(Crashing(), batch_size=8, num_workers=1, timeout=60)
try:
    for _ in FolderSource(loader, None, 64, 3, 0).epoch(0):
        pass
except DynconvError as e:
    print(f"dynconv: error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.slow
@pytest.mark.timeout(120)  # a hang fails the test instead of stalling the suite
def test_loader_worker_crash_is_a_clear_error_not_a_hang():
    # in a child process: torch's SIGCHLD handler for the killed worker must not fire inside pytest itself
    proc = subprocess.run([sys.executable, "-c", _CRASHING_LOADER], capture_output=True, text=True, timeout=100)
    assert_one_line_error(proc, "data-loader worker died")


@pytest.mark.slow
def test_second_process_on_a_run_dir_is_refused_and_stale_locks_are_reclaimed(tmp_path):
    with RunLock(tmp_path):
        proc = subprocess.run([sys.executable, "-c", f"from dynconv.train.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire()"],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and f"is in use by process {os.getpid()}" in proc.stderr
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "x"}))
    with pytest.warns(UserWarning, match="reclaiming stale lock"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_two_trainings_on_one_run_dir(tiny_data, tmp_path):
    run = tmp_path / "shared"
    with RunLock(run):  # stands in for a first job still running
        proc = cli(*train_args(tiny_data, run, "train.epochs=1", "tracking.enabled=false"))
    assert_one_line_error(proc, "is in use by process")
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_every_rank_ends_with_the_same_one_line(tiny_data, tmp_path):
    """A check only the main process makes (the run lock) fails on rank 0: rank 1 does not hang in its next
    collective or print a traceback; both print the same line, and the launcher exits 2."""
    run = tmp_path / "shared"
    with RunLock(run):
        proc = cli(*train_args(tiny_data, run, "train.epochs=1", "tracking.enabled=false"), "--nproc", "2",
                   timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dynconv: error:")]
    assert len(errors) == 2 and errors[0] == errors[1] and "is in use by process" in errors[0], proc.stderr


@pytest.mark.slow
def test_workers_die_with_their_launcher_and_release_the_run(tiny_data, tmp_path):
    """kill -9 of ``dynconv train --nproc 2`` (the OOM killer, a scheduler): its workers, each in a session of
    its own, stop within seconds instead of training on; the run lock is free and ``train.resume=auto``
    continues the run."""
    import psutil

    run = tmp_path / "run"
    args = [*resume_args(tiny_data, run, "train.epochs=30", "train.every_steps=1"), "--nproc", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "dynconv.launch", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = run / "checkpoints" / "epoch_0001_step_000001.pt"
    deadline = time.time() + 240
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert first.exists(), "no checkpoint within 240 s"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=20)
    assert not alive, [p.pid for p in alive]
    newest = max(p.stat().st_mtime for p in (run / "checkpoints").iterdir())
    time.sleep(2)
    assert max(p.stat().st_mtime for p in (run / "checkpoints").iterdir()) == newest  # nobody writes any more
    assert run_cli(*resume_args(tiny_data, run, "train.epochs=1", "train.resume=auto")) == 0


@pytest.mark.slow
def test_ctrl_c_while_checkpoints_are_written_is_one_line_and_leaves_them_whole(tiny_data, tmp_path):
    """Ctrl+C under ``--nproc 2`` lands while a checkpoint is being written (one every step): torch's writer
    used to turn the interrupt into a RuntimeError traceback. The write completes first, then the one line."""
    run = tmp_path / "run"
    args = [*resume_args(tiny_data, run, "train.epochs=30", "train.every_steps=1", "train.keep_checkpoints=50"),
            "--nproc", "2"]
    proc = subprocess.Popen([sys.executable, "-m", "dynconv.launch", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while len(list((run / "checkpoints").glob("epoch_*.pt"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    for ckpt in (run / "checkpoints").glob("epoch_*.pt"):
        load_checkpoint(ckpt)  # every one complete
    assert not list((run / "checkpoints").glob(".*tmp"))


# ---- hostile or foreign files ------------------------------------------------------------------------

class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_pickle_bearing_checkpoint_does_not_execute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pt"
    torch.save({"dynconv": {"format_version": 1}, "model": _Exploit()}, bad, pickle_module=pickle)
    with pytest.raises(DynconvError, match="not a loadable dynconv checkpoint"):
        load_checkpoint(bad)
    assert not (tmp_path / "EXPLOITED").exists()


def test_newer_checkpoint_format_is_refused(tmp_path):
    path = tmp_path / "new.pt"
    torch.save({"dynconv": {"format_version": 99}, "model": {}}, path)
    with pytest.raises(DynconvError, match="format 99, newer than this dynconv"):
        load_checkpoint(path)


def test_symlink_loops_in_image_folders_terminate(tiny_data, tmp_path):
    import shutil

    from dynconv.data import scan_image_folder

    root = tmp_path / "val"
    shutil.copytree(tiny_data / "val", root)
    first = sorted(root.iterdir())[0]
    (first / "loop").symlink_to(root, target_is_directory=True)
    assert len(scan_image_folder(root).samples) == 64


@pytest.mark.slow
def test_malformed_tracking_uri(tiny_data, tmp_path, capsys):
    assert_one_line_error(cli_here(capsys, *train_args(tiny_data, tmp_path / "r", "tracking.uri=not a uri")),
                           "tracking.uri 'not a uri' is not a URI")


# ---- fuzzing the parsers: every input is accepted or refused with a DynconvError ---------------------

_keys = st.sampled_from(["train.epochs", "train.lr", "data.image_size", "model.name", "dropout.kind",
                         "train.batch_size", "train.epoch", "data", "model.stem_mode", "x.y.z", "eval.subsets"])
_values = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True), st.text(max_size=12),
                    st.sampled_from(["null", "[1,2]", "{a: 1}", "true", "1e-3", "'", "]["]))


@FUZZ
@given(st.lists(st.tuples(_keys, _values).map(lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20), max_size=4))
def test_fuzz_config_overrides(overrides):
    try:
        cfg = load_config(None, overrides)
    except DynconvError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(cfg, Config) and cfg.train.epochs >= 1 and cfg.data.image_size >= 8


@FUZZ
@given(st.text(alphabet="RGBUVX, -DNAERMito", max_size=12), st.sampled_from(["RGB", "RGBUV", "RG", "DNA-ER-Mito"]))
def test_fuzz_subset_parser(spec, channels):
    try:
        subsets = parse_subsets(spec, channels)
    except DynconvError as e:
        assert "\n" not in str(e)
    else:
        assert subsets and all(s == tuple(sorted(set(s))) and all(0 <= i < num_channels(channels) for i in s) for s in subsets)
        for s in subsets:
            assert parse_subset(subset_name(s, channels), channels) == s
