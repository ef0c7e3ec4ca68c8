"""train.strategy=deepspeed on the CPU (gloo): ZeRO-2 over 2 processes against one process, SIGKILL and
bitwise resume from DeepSpeed's own checkpoint folders, `dynconv export` into `dynconv eval`, and the
config merge/validation errors."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from pathlib import Path

import psutil
import pytest
import torch

from dynconv.errors import DynconvError
from dynconv.train.strategies.deepspeed_engine import derive_config
from dynconv.train.strategies import DeepSpeedOptions
from helpers import assert_one_line_error, cli, epoch_losses, run_cli, train_args

ROOT = Path(__file__).parents[1]
# scripts run in subprocesses import this checkout's dynconv and tests/helpers.py
SCRIPT_ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}

COMMON = ["train.epochs=2", "train.every_steps=3", "train.keep_checkpoints=3", "data.augment.enabled=false",
          "tracking.enabled=false", "data.num_workers=0"]
DS = ["train.strategy=deepspeed", "deepspeed.zero_stage=2"]


def _args(tiny_data, run_dir, *extra) -> list[str]:
    """Training images from the folder, as in test_ddp.py: its sampler gives N processes the batches of one."""
    argv = [str(a) for a in train_args(tiny_data, run_dir, *COMMON, *extra)]
    return [f"data.train={tiny_data / 'train'}" if a.startswith("data.train=") else a for a in argv]


def _two_process_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "dynconv.launch", argv[0], "--nproc", "2", *argv[1:]]


@pytest.fixture(scope="module")
def ds_run(tiny_data, module_tmp):
    """An uninterrupted ZeRO-2 run over 2 processes (the reference of the tests below)."""
    run_dir = module_tmp("ds") / "zero2"
    proc = subprocess.run(_two_process_cmd(_args(tiny_data, run_dir, *DS)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stdout


@pytest.mark.slow
def test_zero2_over_two_processes_matches_one_process(ds_run, tiny_data, tmp_path, capsys):
    run_dir, stdout = ds_run
    assert "DeepSpeed ZeRO-2 over 2 process(es) (gloo), 16 images per process per micro-step" in stdout
    assert run_cli(*_args(tiny_data, tmp_path / "single")) == 0
    single, ds = epoch_losses(capsys.readouterr().out), epoch_losses(stdout)
    assert len(single) == len(ds) == 2, stdout
    # the same global batches and updates; only BatchNorm statistics differ (per process): close, not equal
    assert all(abs(a - b) < 0.15 for a, b in zip(single, ds)), (single, ds)
    assert stdout.count("checkpoint: ") == 1  # only the main process reports

    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("epoch_*")) == ["epoch_0002", "epoch_0002_step_000006",
                                                            "epoch_0002_step_000009"]
    assert (ckpts / "latest").read_text() == "epoch_0002" and not list(ckpts.glob(".tmp-*"))
    newest = ckpts / "epoch_0002"
    assert len(list(newest.glob("*optim_states.pt"))) == 2  # the optimizer state is sharded over 2 processes
    record = json.loads((newest / "dynconv.json").read_text())
    assert (record["epoch"], record["world_size"], record["zero_stage"], record["dynconv"]["model"]) == \
        (2, 2, 2, "dynamic_resnet18")
    final = torch.load(run_dir / "model.pt", weights_only=True)  # a plain dynconv checkpoint
    assert final["dynconv"]["model"] == "dynamic_resnet18" and not any(k.startswith("module.") for k in final["model"])


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(ds_run, tiny_data, tmp_path):
    killed = tmp_path / "killed"
    cmd = _two_process_cmd(_args(tiny_data, killed, *DS))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = killed / "checkpoints" / "epoch_0002_step_000006"  # 6 of the 10 steps of epoch 2 done
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    launcher = psutil.Process(proc.pid)
    for p in [launcher, *launcher.children(recursive=True)]:  # the launcher, torchrun and both workers at once
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    assert target.is_dir() and not (killed / "model.pt").exists()

    resumed = subprocess.run(cmd + ["train.resume=auto"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2 step 6" in resumed.stdout
    assert epoch_losses(resumed.stdout) == epoch_losses(ds_run[1])[1:]  # epoch 2's loss includes the steps before the kill
    a = torch.load(ds_run[0] / "model.pt", weights_only=True)["model"]
    b = torch.load(killed / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_export_of_a_zero_checkpoint_evaluates(ds_run, tiny_data, tmp_path, capsys):
    run_dir, _ = ds_run
    out = tmp_path / "exported.pt"
    assert run_cli("export", run_dir / "checkpoints" / "epoch_0002", out) == 0
    assert "DeepSpeed ZeRO-2 checkpoint" in capsys.readouterr().out
    exported = torch.load(out, weights_only=True)
    final = torch.load(run_dir / "model.pt", weights_only=True)["model"]
    assert exported["model"].keys() == final.keys() and exported["dynconv"]["model"] == "dynamic_resnet18"
    for k, v in exported["model"].items():  # model.pt = the last epoch + BatchNorm statistics re-estimated per subset
        assert v.dtype == final[k].dtype and ("subset_" in k or torch.equal(v, final[k])), k
    assert run_cli("eval", out, "--data", tiny_data / "val", "--subsets", "RGB,R", "--json", tmp_path / "e.json") == 0
    assert set(json.loads((tmp_path / "e.json").read_text())["subsets"]) == {"RGB", "R"}

    assert run_cli("export", run_dir, tmp_path / "newest.pt") == 0  # run.dir: its newest complete checkpoint
    assert run_cli("export", run_dir / "model.pt", tmp_path / "plain.pt") == 0  # plain: the weights part
    assert run_cli("export", tmp_path, tmp_path / "x.pt") == 2
    assert "holds no DeepSpeed checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_broken_deepspeed_checkpoint_is_skipped(ds_run, tmp_path):
    from dynconv.train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(ds_run[0] / "checkpoints", run / "checkpoints")
    shard = next((run / "checkpoints" / "epoch_0002").glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])  # cut short, as by a crash mid-write
    with pytest.warns(UserWarning, match="epoch_0002 is incomplete"):
        assert latest_checkpoint(run) == run / "checkpoints" / "epoch_0002_step_000009"
    (run / "checkpoints" / "epoch_0002_step_000009" / "dynconv.json").unlink()  # never completed
    with pytest.warns(UserWarning):
        assert latest_checkpoint(run) == run / "checkpoints" / "epoch_0002_step_000006"


# ---- the DeepSpeed config: derived from dynconv's, merged with a JSON file, validated ----------------------

def _derive(tmp_path, file: dict | str | None = None, **options):
    kw = {"global_batch": 32, "world": 2, "grad_accum_steps": 2, "precision": "fp32", "grad_clip": 0.0}
    for key in list(options):
        if key in kw:
            kw[key] = options.pop(key)
    if file is not None:
        path = tmp_path / "ds.json"
        path.write_text(file if isinstance(file, str) else json.dumps(file))
        options["config"] = str(path)
    return derive_config(DeepSpeedOptions(**options), **kw)


def test_config_is_derived_from_dynconv_settings(tmp_path):
    cfg = _derive(tmp_path, precision="bf16")
    assert (cfg["train_batch_size"], cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (32, 8, 2)
    assert cfg["gradient_clipping"] == 0.0  # explicit: DeepSpeed 0.19 would clip to 1.0 by default
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and cfg["zero_optimization"] == {"stage": 2}
    merged = _derive(tmp_path, {"zero_optimization": {"stage": 1, "overlap_comm": True}, "wall_clock_breakdown": True},
                     offload_optimizer="cpu")
    assert merged["zero_optimization"] == {"stage": 1, "overlap_comm": True, "offload_optimizer": {"device": "cpu"}}
    assert merged["wall_clock_breakdown"] is True
    assert _derive(tmp_path, zero_stage=3, offload_param="cpu")["zero_optimization"]["offload_param"] == {"device": "cpu"}


@pytest.mark.parametrize("file, options, fragment", [
    ('{"train_batch_size": 64', {}, "is not valid JSON: Expecting ',' delimiter at line 1"),
    ('[1, 2]', {}, "must hold a JSON object"),
    ({"optimizer": {"type": "Adam"}}, {}, "dynconv builds the optimizer"),
    ({"bf16": {"enabled": True}}, {}, "precision comes from train.precision"),
    ({"train_batch_size": 64}, {}, "derives 32 from train.batch_size"),
    ({"gradient_clipping": 1.0}, {}, "from train.grad_clip"),
    ({"zero_optimization": {"stage": 1}}, {"zero_stage": 3}, "set it in one place"),
    (None, {"zero_stage": 2, "offload_param": "cpu"}, "needs deepspeed.zero_stage=3"),
    (None, {"zero_stage": 0, "offload_optimizer": "cpu"}, "needs ZeRO"),
    (None, {"global_batch": 30}, "must be divisible"),
])
def test_config_contradictions_are_errors(tmp_path, file, options, fragment):
    with pytest.raises(DynconvError, match=re.escape(fragment)):
        _derive(tmp_path, file, **options)


@pytest.mark.slow
def test_bad_deepspeed_config_is_one_line_error(tiny_data, tmp_path, capsys):
    """DeepSpeed itself ignores unknown top-level keys; dynconv names them. Each case but the missing file (found
    before DeepSpeed starts: in-process) starts DeepSpeed."""
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({"zero_optimisation": {"stage": 3}}))
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_com": True}}))
    for extra, fragment in (([f"deepspeed.config={typo}"], "unknown DeepSpeed key 'zero_optimisation' (DeepSpeed "
                                                            "would ignore it): did you mean 'zero_optimization'?"),
                            ([f"deepspeed.config={nested}"], "DeepSpeed rejects 'overlap_com'")):
        proc = cli(*_args(tiny_data, tmp_path / "run", "train.strategy=deepspeed", *extra))
        assert_one_line_error(proc, fragment)
    capsys.readouterr()
    assert run_cli(*_args(tiny_data, tmp_path / "run", "train.strategy=deepspeed",
                          f"deepspeed.config={tmp_path / 'missing.json'}")) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("dynconv: error:") and "missing.json does not exist" in err[0], err
    assert not (tmp_path / "run").exists()


ACCUMULATION_CHECK = r"""
import sys, torch
from pathlib import Path
from dynconv.data.loaders import DataSource
from dynconv.dropout import ChannelDropout
from dynconv.train.distributed import init_distributed
from dynconv.train.loop import train_one_epoch
from dynconv.train.strategies import DeepSpeedOptions, build_strategy
from helpers import Tiny, fit_spec, make_batches

info, out = init_distributed(False, always=True), []
for name, k, bad, passes in (("single", 1, (), 1), ("deepspeed", 2, (), 1), ("single", 2, (), 1),
                             ("deepspeed", 2, (1, 6), 1), ("single", 1, (), 3), ("deepspeed", 2, (), 3),
                             ("deepspeed", 2, (1, 6), 3)):
    torch.manual_seed(0)
    model = Tiny(norm=False)
    strategy = build_strategy(name, torch.device("cpu"), info, grad_accum_steps=k, global_batch=8, passes=passes,
                              options=DeepSpeedOptions(zero_stage=2) if name == "deepspeed" else None)
    strategy.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    dropout = ChannelDropout("sandwich", 3, seed=4, n_subsets=3) if passes > 1 else ChannelDropout("none", 3)
    spec = fit_spec(Path(sys.argv[1]), 1, max_bad_steps=5, dropout=dropout)
    spec.train_transform = lambda x, e, s: x.float() / 255 * (float("nan") if s in bad else 1.0)
    data = make_batches(8) if k == 2 else [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
                                      for a, b in zip(make_batches(8)[::2], make_batches(8)[1::2])]
    train_one_epoch(strategy, DataSource(data, None, 32, "memory"), spec, 1)
    out.append((model.state_dict(), spec.bad_steps, getattr(getattr(strategy, "engine", None), "global_steps", None)))
(ref, _, _), (ds, _, ds_updates), (acc, _, _), (skipped, bad_steps, updates), *sandwich = out
close = lambda a, b: all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
print("ds==single", close(ref, ds), "accumulated==single", close(ref, acc), "updates", ds_updates, updates,
      "bad", bad_steps, "skipped differs", not close(ref, skipped))
(one, _, _), (ds3, _, ds3_updates), (skipped3, bad3, updates3) = sandwich
print("sandwich ds==single", close(one, ds3), "updates", ds3_updates, updates3, "bad", bad3)
"""


@pytest.mark.slow
def test_deepspeed_accumulation_matches_one_big_batch_and_survives_non_finite_micro_batches(tmp_path):
    """ZeRO-2 with 2 micro-batches of 4 = one batch of 8 (no BatchNorm: exact up to rounding); a non-finite
    micro-batch (the second of step 0: the update uses the first; the first of step 3: step skipped) is
    skipped without upsetting DeepSpeed's micro-step count; the same with 3 sandwich passes per micro-batch (each
    one of DeepSpeed's micro-steps)."""
    proc = subprocess.run([sys.executable, "-c", ACCUMULATION_CHECK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=SCRIPT_ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ds==single True accumulated==single True updates 4 3 bad 2 skipped differs True" in proc.stdout, proc.stdout
    assert "sandwich ds==single True updates 4 3 bad 2" in proc.stdout, proc.stdout


def test_cli_accepts_the_deepspeed_launchers_local_rank():
    from dynconv.launch.cli import build_parser

    args = build_parser().parse_args(["--local_rank=1", "train", "--config", "run.yaml", "train.strategy=deepspeed"])
    assert args.command == "train" and args.overrides == ["train.strategy=deepspeed"]


TWO_PROCESS_ACCUMULATION = r"""
import sys, torch
from pathlib import Path
from dynconv.data.loaders import DataSource
from dynconv.train.distributed import init_distributed
from dynconv.train.loop import train_one_epoch
from dynconv.train.strategies import DeepSpeedOptions, build_strategy
from helpers import Tiny, fit_spec, make_batches

from dynconv.dropout import ChannelDropout

info = init_distributed(False, always=True)
data = make_batches(8)  # 4 steps x 2 micro-batches x 4 images, globally
mine = [(x[2 * info.rank:2 * info.rank + 2], y[2 * info.rank:2 * info.rank + 2]) for x, y in data]
result = []
for name, passes in (("ddp", 1), ("deepspeed", 1), ("single", 1), ("ddp", 3), ("deepspeed", 3), ("single", 3)):
    torch.manual_seed(0)  # single: on both processes (its metrics are all-reduced)
    model = Tiny(norm=False)
    k, batches = (2, mine) if name != "single" else (1, [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
                                                         for a, b in zip(data[::2], data[1::2])])
    strategy = build_strategy(name, torch.device("cpu"), info if name != "single" else type(info)(), grad_accum_steps=k,
                              global_batch=8, options=DeepSpeedOptions(zero_stage=2) if name == "deepspeed" else None,
                              passes=passes)
    strategy.setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    dropout = ChannelDropout("sandwich", 3, seed=4, n_subsets=3) if passes > 1 else ChannelDropout("none", 3)
    train_one_epoch(strategy, DataSource(batches, None, 32, "memory"), fit_spec(Path(sys.argv[1]), 1, dropout=dropout), 1)
    result.append(model.state_dict())
if info.rank == 0:
    ddp, ds, single, ddp3, ds3, single3 = result
    close = lambda a, b: all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    print("ddp==single", close(ddp, single), "zero2==single", close(ds, single))
    print("sandwich ddp==single", close(ddp3, single3), "zero2==single", close(ds3, single3))
torch.distributed.barrier()  # a rank that tears the group down while its peer still works can abort (std::terminate)
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_two_process_accumulation_with_ddp_and_zero2_equals_one_batch(tmp_path):
    """2 processes x 2 micro-batches of 2 images = one batch of 8 (no BatchNorm: exact up to rounding):
    DDP's no_sync on the first micro-step and DeepSpeed's accumulation boundary both reduce correctly; with 3
    sandwich passes per micro-batch too (DDP syncs on the step's last pass only)."""
    script = tmp_path / "check.py"
    script.write_text(TWO_PROCESS_ACCUMULATION)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=SCRIPT_ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ddp==single True zero2==single True" in proc.stdout, proc.stdout
    assert "sandwich ddp==single True zero2==single True" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_channels_last_with_deepspeed_trains_with_contiguous_weights(tiny_data, tmp_path):
    """DeepSpeed broadcasts weights through byte views: channels_last weights used to crash its initialize."""
    proc = cli(*_args(tiny_data, tmp_path / "cl", *DS, "train.epochs=1", "train.channels_last=true"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "inputs are channels_last, the weights stay contiguous" in proc.stderr
