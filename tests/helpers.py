"""What many tests share: the CLI in-process and as a subprocess, the one-line error check, the tiny training
arguments, and small in-memory models and batches for the trainer."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "launch" / "configs" / "demo.yaml"
SUBSETS = ["RGB", "RG", "RB", "GB", "R", "G", "B"]
CPU = torch.device("cpu")
# the tests' ResNets/RANs: 16 channels in the first stage instead of 64 (1/16 of the parameters and checkpoint
# bytes, ~1/13 of the MACs): what the tests check (resume, processes, tracking, ...) does not depend on width
TEST_WIDTH = 16


# ---- the command line ------------------------------------------------------------------------------------

def run_cli(*argv) -> int:
    """``dynconv ARGV`` in this process; its exit status."""
    from dynconv.launch.cli import main

    return main([str(a) for a in argv])


def cli(*argv, cwd=None, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    """``python -m dynconv.launch ARGV`` in a subprocess (what a user's shell sees: exit status, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "dynconv.launch", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def cli_here(capsys, *argv) -> subprocess.CompletedProcess:
    """``dynconv ARGV`` in this process, seen as :func:`cli` sees it (exit status, stdout, stderr): for errors found
    before a run starts, without a new interpreter's start-up (one subprocess test per kind keeps the shell's view)."""
    capsys.readouterr()
    status = run_cli(*argv)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["dynconv", *map(str, argv)], status, out.out, out.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2, no traceback, exactly one ``dynconv: error:`` line, containing ``fragment``."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in lines if ln.startswith("dynconv: error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr


def train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    """``train`` on the tiny data set (32 px, 4 classes) with the demo config, 15 epochs unless overridden."""
    return ["train", "--config", CONFIG, f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}",
            "model.num_classes=4", "data.image_size=32", "train.epochs=15", "train.batch_size=32",
            "train.lr=0.01", f"run.dir={run_dir}", "data.num_workers=1", f"model.width={TEST_WIDTH}", *extra]


RESUME_COMMON = ["train.epochs=2", "train.every_steps=3", "train.keep_checkpoints=3", "tracking.enabled=false",
                 "data.num_workers=0"]


def resume_args(tiny_data: Path, run_dir: Path, *extra: str) -> list[str]:
    """Short runs for the kill-and-resume tests: 2 epochs from the image folder, no loader workers."""
    argv = [str(a) for a in train_args(tiny_data, run_dir, *RESUME_COMMON, *extra)]
    return [f"data.train={tiny_data / 'train'}" if a.startswith("data.train=") else a for a in argv
            if a != "data.num_workers=1"]


def epoch_losses(stdout: str) -> list[float]:
    """``train_loss`` of every ``epoch N/M`` line the trainer printed."""
    return [float(x) for x in re.findall(r"^epoch \d+/\d+ +train_loss=([0-9.]+)", stdout, re.M)]


# ---- the trainer on tiny in-memory models ------------------------------------------------------------

class Tiny(nn.Module):
    """conv -> (BatchNorm) -> pool -> linear; remembers the input sizes it was trained on."""

    def __init__(self, norm: bool = True):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4) if norm else nn.Identity(), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        self.sizes: list[int] = []

    def forward(self, x, channels=None):
        if self.training and not torch.compiler.is_compiling():
            self.sizes.append(x.shape[-1])
        return self.net(x)


def make_batches(n: int, size: int = 16, batch: int = 4, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g),
             torch.randint(0, 2, (batch,), generator=g)) for _ in range(n)]


def fit_spec(run_dir: Path, epochs: int, **kw):
    from dynconv.dropout import ChannelDropout
    from dynconv.train import FitSpec

    kw.setdefault("dropout", ChannelDropout("none", 3))
    return FitSpec(epochs=epochs, device=CPU, train_transform=lambda x, e, s: x.float() / 255,
                   eval_transform=lambda x: x.float() / 255, run_dir=run_dir, manifest={"format_version": 1}, **kw)


def stop_after(polls, n: int):
    """A hook that asks to stop once ``polls`` (one per optimiser step) reach ``n``."""
    from dynconv.train import Hook

    class StopAfter(Hook):
        def should_stop(self) -> bool:
            return next(polls) >= n

    return StopAfter()
