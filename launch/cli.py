"""The ``dynconv`` command line. Heavy libraries are imported inside each command, so ``--help`` is quick.

User errors (:class:`DynconvError`) print one line, ``dynconv: error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from dynconv.errors import DynconvError


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"dynconv: warning: {message}", file=sys.stderr)


def cmd_data_synth(a: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from dynconv.data.synth import write_dataset

    out = write_dataset(a.out_dir, a.classes, a.train_per_class, a.val_per_class, a.size, a.seed,
                        overwrite=a.overwrite, progress=lambda jobs: tqdm(jobs, desc="synth", unit="img", disable=None))
    n = a.classes * (a.train_per_class + a.val_per_class)
    print(f"wrote {n} images of {a.classes} classes to {out}/train and {out}/val")
    return 0


def cmd_convert(a: argparse.Namespace) -> int:
    import time

    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton

    index = scan_image_folder(a.image_folder, strict=a.strict)
    t0 = time.perf_counter()
    out = write_beton(index, a.out, max_side=a.max_side, jpeg_quality=a.jpeg_quality, num_workers=a.workers)
    dt = time.perf_counter() - t0
    n = len(index.samples)
    print(f"wrote {out}: {n} images, {len(index.classes)} classes, {len(index.skipped)} skipped, "
          f"{n / max(dt, 1e-9):.0f} images/s")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.nproc > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _launch_local(a.nproc, ["train", "--config", a.config, *a.overrides])
    from dynconv.train.distributed import shutdown

    from .config import load_config
    from .training import run_training

    try:
        result = run_training(load_config(a.config, a.overrides))
    finally:
        shutdown()
    if result["report"] is not None:  # the main process reports
        _print_result(result)
    return 0


def _launch_local(nproc: int, argv: list[str]) -> int:
    """Start ``nproc`` local processes of ``dynconv ARGV`` with torch's elastic launcher (torchrun)."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "launch.cli", *argv]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode


def _print_result(result: dict) -> None:
    from .report import print_table

    report = result["report"]
    print_table(report["subsets"], f"{report['model']} on {report['num_samples']} validation images")
    s = report["summary"]
    print(f"mean subset accuracy {100 * s['mean_subset_acc']:.2f}%, worst {100 * s['worst_subset_acc']:.2f}%")
    print(f"checkpoint: {result['checkpoint']}")
    if result["run_id"]:
        print(f"MLflow run id: {result['run_id']}  (tracking URI: {result['tracking_uri']})")


def cmd_export(a: argparse.Namespace) -> int:
    from .export import run_export

    out, what = run_export(a.checkpoint, a.out)
    print(f"wrote {out}: fp32 weights from {what}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from .evaluation import run_eval
    from .report import print_table, write_reports

    report = run_eval(a.checkpoint, a.data, a.subsets, a.batch_size, a.workers, a.strict, a.device, a.model,
                      a.reference)
    print_table(report["subsets"], f"{report['model']} on {report['num_samples']} images of {a.data}")
    s = report["summary"]
    line = f"mean subset accuracy {100 * s['mean_subset_acc']:.2f}%, worst {100 * s['worst_subset_acc']:.2f}%"
    if "rgb_gap" in s:
        line += f", rgb_gap {100 * s['rgb_gap']:+.2f} points (reference {100 * report['reference']['accuracy']:.2f}%)"
    print(line)
    if a.json:
        write_reports(report, Path(a.json))
        print(f"wrote {a.json}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from dynconv.data import scan_image_folder
    from dynconv.data.ffcv_io import write_beton
    from dynconv.data.synth import write_dataset

    from .config import load_config
    from .training import run_training

    out = Path(a.out)
    data = out / "data"
    if not (data / "train").is_dir():
        print(f"[1/4] synthesising the embedded colour+shape dataset into {data}")
        write_dataset(data, num_classes=10, train_per_class=a.train_per_class, val_per_class=30, size=64, seed=0,
                      overwrite=True)
    for split in ("train", "val"):
        beton = data / f"{split}.beton"
        if not beton.exists():
            print(f"[2/4] converting {split} to FFCV: {beton}")
            write_beton(scan_image_folder(data / split), beton, max_side=64, num_workers=2)
    run_dir = out / "runs" / "demo"
    overrides = [f"data.train={data / 'train.beton'}", f"data.val={data / 'val.beton'}", f"run.dir={run_dir}",
                 "train.resume=auto"]
    if a.epochs:
        overrides.append(f"train.epochs={a.epochs}")
    cfg = load_config(Path(__file__).parent / "configs" / "demo.yaml", overrides + a.overrides)
    if (run_dir / "model.pt").exists():
        import shutil

        shutil.rmtree(run_dir)  # the demo starts fresh; MLflow keeps the earlier run
    print(f"[3/4] training {cfg.model.name} for {cfg.train.epochs} epochs (CPU: a few minutes)")
    result = run_training(cfg)
    print("[4/4] per-subset evaluation on the validation split")
    _print_result(result)
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from .calibrate import run_calibrate

    out = run_calibrate(a.checkpoint, a.data, a.batches, a.batch_size, a.out, a.seed, a.workers, a.device)
    print(f"wrote {out}")
    return 0


def cmd_compare(a: argparse.Namespace) -> int:
    from .compare import run_compare

    run_compare(a.tracking_uri, a.experiment, a.runs, a.filter, a.sort, a.format, a.plot, a.baseline, a.log_to,
                a.reference)
    if a.plot:
        print(f"wrote {a.plot}", file=sys.stderr)
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from dynconv.fileio import atomic_write_text

    from .compare import collect_rows, tracking_uri
    from .study_report import study_report

    if not a.study:
        raise DynconvError("dynconv report needs --study (the only report so far)")
    rows, _ = collect_rows(tracking_uri(a.tracking_uri), a.experiment)
    text = study_report(rows)
    if a.out:
        atomic_write_text(a.out, text)
        print(f"wrote {a.out}", file=sys.stderr)
    print(text, end="")
    return 0


def cmd_mlflow_server(a: argparse.Namespace) -> int:
    from .mlflow_server import run_server

    return run_server(a.host, a.port, a.backend, a.artifacts, a.workers)


def cmd_sync(a: argparse.Namespace) -> int:
    from .tracking import sync_run_dir

    run_id, sent, left = sync_run_dir(a.run_dir)
    print(f"run {run_id}: delivered {sent} buffered record(s), {left} left")
    return 0 if left == 0 else 1


def cmd_flops(a: argparse.Namespace) -> int:
    from dynconv.channels import parse_subset, validate_channels
    from dynconv.flops import count_macs, count_params
    from dynconv.models import create_model

    all_channels = validate_channels(a.dataset_channels)
    subset = parse_subset(a.channels or all_channels, all_channels)
    model = create_model(a.model, num_classes=a.classes, in_chans=len(all_channels), stem_mode=a.stem_mode,
                         stem=a.stem)
    macs = count_macs(model, len(all_channels), a.size, subset)
    name = "".join(all_channels[i] for i in subset)
    print(f"{a.model} at {a.size}x{a.size}, channels {name}, {a.classes} classes: "
          f"{macs:,} MACs ({macs / 1e9:.3f} G), {count_params(model):,} parameters")
    return 0


def cmd_ablate(a: argparse.Namespace) -> int:
    from .ablation import MODE_CHOICES, NORM_CHOICES, PRESET_CHOICES, parse_choices, run_ablation

    modes = parse_choices(a.modes, MODE_CHOICES, "stem mode(s)")
    norms = parse_choices(a.norms, NORM_CHOICES, "norm mode(s)")
    presets = parse_choices(a.presets, PRESET_CHOICES, "stem preset(s)")
    if a.seeds < 1:
        raise DynconvError("--seeds must be at least 1 (2 or more to see the spread)")
    result = run_ablation(a.config, a.overrides, Path(a.out), modes, presets, a.seeds, a.quick, norms)
    print(Path(result["files"][1]).read_text())
    print("wrote " + ", ".join(result["files"]))
    if result["run_id"]:
        print(f"MLflow parent run id: {result['run_id']}")
    return 0


def cmd_submit(a: argparse.Namespace) -> int:
    from slurm.executor import default_cluster
    from slurm.submit import submit

    cluster = a.cluster or default_cluster()
    out = submit(a.config, a.overrides, _resources(a), cluster=cluster, root=Path(a.folder), array_file=a.array,
                 command=a.run, dry_run=a.dry_run)
    return _report_submission(out, a, cluster)


def _report_submission(out: dict, a: argparse.Namespace, cluster: str) -> int:
    """Print the script (dry run) or the job ids; wait for the results where asked (always off Slurm)."""
    if a.dry_run:
        print(out["script"], end="")
        return 0
    ids = [j.job_id for j in out["jobs"]]
    print(f"submitted {len(ids)} job(s) to {cluster}: {', '.join(ids)}  (folder {out['folder']})")
    if not (a.wait or cluster != "slurm"):
        print(f"follow with: dynconv jobs --folder {a.folder} | dynconv logs {ids[0]} --folder {a.folder}")
        return 0
    failed = 0
    for job in out["jobs"]:
        try:
            results = job.results()
        except Exception as e:
            failed += 1
            print(f"job {job.job_id} failed: {str(e).strip().splitlines()[-1][:300]}", file=sys.stderr)
            continue
        main = next((r for r in results if isinstance(r, dict) and r.get("rank", 0) == 0), results[0])
        line = f"job {job.job_id} finished"
        if isinstance(main, dict) and isinstance(main.get("summary"), str):  # a sweep: its summary table
            line += f": {main['status']}, best config {main['best_config']}\n{main['summary']}"
        elif isinstance(main, dict) and main.get("summary"):
            s = main["summary"]
            line += (f": mean subset accuracy {100 * s['mean_subset_acc']:.2f}%, worst {100 * s['worst_subset_acc']:.2f}%"
                     f" | MLflow run {main['run_id']} | {main['run_dir']}")
        print(line)
    return 1 if failed else 0


def cmd_jobs(a: argparse.Namespace) -> int:
    from slurm.submissions import job_rows

    rows = job_rows(Path(a.folder))
    cols = ("job", "state", "cluster", "mlflow_run", "what", "run_dir", "submitted")
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())
    return 0


def cmd_logs(a: argparse.Namespace) -> int:
    from slurm.submissions import find_job, log_path

    rec, job = find_job(Path(a.folder), a.job_id)
    path = log_path(rec, job, a.task, a.stderr)
    if not path.exists():
        raise DynconvError(f"job {a.job_id} has no log {path.name} yet (still pending?): try again, or "
                           f"'dynconv jobs --folder {a.folder}'")
    sys.stdout.write(path.read_text(errors="replace"))
    return 0


def cmd_cancel(a: argparse.Namespace) -> int:
    import subprocess

    from slurm.submissions import find_job

    rec, job = find_job(Path(a.folder), a.job_id)
    if rec["cluster"] != "slurm":
        raise DynconvError(f"job {a.job_id} ran on the {rec['cluster']} executor; only Slurm jobs can be cancelled")
    r = subprocess.run(["scancel", a.job_id], capture_output=True, text=True)
    if r.returncode != 0:
        raise DynconvError(f"scancel {a.job_id} failed: {r.stderr.strip() or r.returncode}")
    print(f"cancelled {a.job_id}")
    return 0


def command_names() -> list[str]:
    """The top-level subcommands (``train``, ``eval``, ...)."""
    parser = build_parser()
    sub = next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))
    return list(sub.choices)


def _add_resource_args(p: argparse.ArgumentParser) -> None:
    """Where and with what a job runs: shared by ``submit`` and ``sweep --on-slurm``."""
    g = p.add_argument_group("job resources (submitit)")
    g.add_argument("--cluster", choices=("slurm", "local", "debug"), default=None,
                    help="default: slurm where sbatch is on PATH, else local processes")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU")
    g.add_argument("--tasks-per-node", type=int, default=1, help="data-parallel processes per node without GPUs")
    g.add_argument("--cpus-per-task", type=int, default=1)
    g.add_argument("--mem", default=None, help="memory per node, e.g. 16G")
    g.add_argument("--time", type=int, default=60, help="walltime in minutes")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--signal-delay", type=int, default=120, help="seconds before the limit Slurm sends USR2 (checkpoint + requeue)")
    g.add_argument("--name", default="dynconv", help="job name")
    g.add_argument("--folder", default="jobs", help="where submission folders go (mode 0700)")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    g.add_argument("--wait", action="store_true", help="wait for the job(s) and print their results (always for local/debug)")


def _resources(a: argparse.Namespace):
    from slurm.executor import Resources

    return Resources(nodes=a.nodes, tasks_per_node=a.tasks_per_node, gpus_per_node=a.gpus_per_node,
                     cpus_per_task=a.cpus_per_task, mem=a.mem, time_min=a.time, partition=a.partition,
                     account=a.account, qos=a.qos, constraint=a.constraint,
                     max_parallel=getattr(a, "max_parallel", None), signal_delay_s=a.signal_delay, name=a.name)


def cmd_sweep(a: argparse.Namespace) -> int:
    kwargs = dict(config=a.config, space=a.space, overrides=list(a.overrides), scheduler=a.scheduler,
                  search=a.search, num_samples=a.num_samples, max_concurrent=a.max_concurrent, metric=a.metric,
                  resources=a.resources_per_trial, grace_period=a.grace_period, reduction_factor=a.reduction_factor,
                  perturbation_interval=a.perturbation_interval, seed=a.seed)
    if a.on_slurm:
        return _sweep_on_slurm(a, kwargs)
    from sweeps.runner import run_sweep

    result = run_sweep(a.out, **kwargs, resume=a.resume, ray_address=a.ray_address,
                       verbose=0 if a.quiet else 2 if a.verbose else 1)
    print()
    print(result["summary"], end="")
    if result["parent_run_id"]:
        print(f"MLflow parent run id: {result['parent_run_id']}  (tracking URI: {result['tracking_uri']})")
    if result["status"] == "interrupted":
        done = sum(r["finished"] for r in result["rows"])
        print(f"dynconv: sweep interrupted with {done} of {len(result['rows'])} trials finished; continue it with "
              f"'dynconv sweep --out {result['out']} --resume'", file=sys.stderr)
        return 130
    return 0


def _sweep_on_slurm(a: argparse.Namespace, kwargs: dict) -> int:
    """The whole sweep as one job: Ray head on the first node, workers on the others."""
    from slurm.executor import default_cluster
    from slurm.submit import submit_sweep
    from sweeps.runner import resolve_spec

    if a.ray_address:
        raise DynconvError("--on-slurm starts its own Ray cluster inside the job: drop --ray-address")
    out = Path(a.out).resolve()
    if not a.resume:  # every setting is checked here, before anything is submitted
        resolve_spec(out, False, a.config, a.space, a.overrides, {k: kwargs[k] for k in kwargs
                                                                   if k not in ("config", "space", "overrides")})
        kwargs = {**kwargs, "config": str(Path(a.config).resolve()), "space": str(Path(a.space).resolve())}
    cluster = a.cluster or default_cluster()
    result = submit_sweep({**kwargs, "out": str(out)}, _resources(a), cluster=cluster, root=Path(a.folder),
                          dry_run=a.dry_run)
    return _report_submission(result, a, cluster)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynconv", description="Train and evaluate channel-adaptive CNNs.")
    # the deepspeed launcher passes --local_rank=N first; LOCAL_RANK in the environment says the same
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="dataset utilities").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write the deterministic synthetic colour+shape ImageFolder dataset")
    s.add_argument("out_dir")
    s.add_argument("--classes", type=int, default=10)
    s.add_argument("--train-per-class", type=int, default=100)
    s.add_argument("--val-per-class", type=int, default=30)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT_DIR")
    s.set_defaults(func=cmd_data_synth)

    c = sub.add_parser("convert", help="convert an ImageFolder dataset to an FFCV .beton file")
    c.add_argument("image_folder")
    c.add_argument("out", metavar="OUT.beton")
    c.add_argument("--max-side", type=int, default=256)
    c.add_argument("--jpeg-quality", type=int, default=90)
    c.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    c.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")
    c.set_defaults(func=cmd_convert)

    t = sub.add_parser("train", help="train a model from a YAML config, then evaluate every channel subset")
    t.add_argument("--config", required=True)
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this node (torchrun)")
    t.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on channel subsets")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="validation image folder or .beton file")
    e.add_argument("--subsets", default=None, help="comma-separated, e.g. RGB,RG,R (default: all)")
    e.add_argument("--json", default=None, help="write the results to this JSON file")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--strict", action="store_true")
    e.add_argument("--device", default="auto")
    e.add_argument("--model", default=None, help="fail unless the checkpoint holds this model")
    e.add_argument("--reference", default=None,
                   help="RGB-only reference (checkpoint or eval.json): adds rgb_gap = its accuracy - this model's")
    e.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="consolidate a DeepSpeed (ZeRO) checkpoint into plain weights for 'dynconv eval'")
    ex.add_argument("checkpoint", help="run.dir, run.dir/checkpoints, a DeepSpeed checkpoint folder or a .pt file")
    ex.add_argument("out", metavar="OUT.pt")
    ex.set_defaults(func=cmd_export)

    cb = sub.add_parser("calibrate", help="re-estimate per-subset BatchNorm statistics of a checkpoint")
    cb.add_argument("checkpoint")
    cb.add_argument("--data", required=True, help="training images (folder or .beton)")
    cb.add_argument("--batches", type=int, default=20, help="batches per subset")
    cb.add_argument("--batch-size", type=int, default=64)
    cb.add_argument("--out", default=None, help="default: CHECKPOINT with suffix .calibrated.pt")
    cb.add_argument("--seed", type=int, default=0)
    cb.add_argument("--workers", type=int, default=2)
    cb.add_argument("--device", default="auto")
    cb.set_defaults(func=cmd_calibrate)

    cp = sub.add_parser("compare", help="compare MLflow runs: accuracy per channel subset vs MACs")
    cp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    cp.add_argument("--experiment", action="append", default=None, help="experiment name (repeatable)")
    cp.add_argument("--runs", nargs="+", default=None, metavar="RUN_ID")
    cp.add_argument("--filter", default="", help="MLflow filter string, e.g. \"params.model.norm = 'recalibrate'\"")
    cp.add_argument("--sort", default="worst_subset_acc")
    cp.add_argument("--format", choices=("table", "markdown", "csv", "json"), default=None,
                    help="default: table in a terminal, markdown in a pipe")
    cp.add_argument("--plot", default=None, help="write bars, accuracy-vs-MACs and learning curves (.png/.svg)")
    cp.add_argument("--baseline", default=None, help="run id (prefix) or name: adds Δ columns")
    cp.add_argument("--log-to", default=None, metavar="RUN_ID", help="log the table and plot to this run")
    cp.add_argument("--reference", default=None, metavar="RUN",
                    help="RGB-only reference run (id or name): adds rgb_gap = its RGB accuracy - each run's")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="render the study's tables from runs tagged run.tags.study=ROLE")
    rp.add_argument("--study", action="store_true", help="the original study's three tables")
    rp.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    rp.add_argument("--experiment", action="append", default=None)
    rp.add_argument("--out", default=None, help="also write the Markdown to this file")
    rp.set_defaults(func=cmd_report)

    ms = sub.add_parser("mlflow-server", help="start an MLflow tracking server (database backend, artifact proxy)")
    ms.add_argument("--host", default="127.0.0.1")
    ms.add_argument("--port", type=int, default=5000)
    ms.add_argument("--backend", default="sqlite:///mlflow-server/mlflow.db")
    ms.add_argument("--artifacts", default="mlflow-server/artifacts")
    ms.add_argument("--workers", type=int, default=1)
    ms.set_defaults(func=cmd_mlflow_server)

    sy = sub.add_parser("sync", help="deliver a run's buffered MLflow records (after the store was unreachable)")
    sy.add_argument("run_dir")
    sy.set_defaults(func=cmd_sync)

    f = sub.add_parser("flops", help="count MACs and parameters of a model for one input")
    f.add_argument("model")
    f.add_argument("--size", type=int, default=96)
    f.add_argument("--channels", default=None, help="present channels, e.g. RG (default: all)")
    f.add_argument("--dataset-channels", default="RGB", help="the dataset's channel names (default RGB)")
    f.add_argument("--stem-mode", default=None, help="prefix, slice, template_mixing, hypernet or depthwise")
    f.add_argument("--stem", default=None, help="stem preset: torchvision or study")
    f.add_argument("--classes", type=int, default=50)
    f.set_defaults(func=cmd_flops)

    ab = sub.add_parser("ablate", help="train plain vs each stem mode x stem preset over seeds; table + plot")
    ab.add_argument("--config", required=True)
    ab.add_argument("--out", required=True, help="folder for runs, ablation.{json,md,png}")
    ab.add_argument("--modes", default="prefix,slice,template_mixing,hypernet,depthwise")
    ab.add_argument("--presets", default="torchvision,study")
    ab.add_argument("--norms", default="shared", help="comma-separated: shared,recalibrate,switchable,group")
    ab.add_argument("--seeds", type=int, default=2)
    ab.add_argument("--quick", action="store_true", help="CPU size: at most 3 epochs at 32 px")
    ab.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    ab.set_defaults(func=cmd_ablate)

    sb = sub.add_parser("submit", help="submit a training (or any dynconv command) to Slurm via submitit")
    sb.add_argument("--config", default=None, help="training config (YAML)")
    sb.add_argument("--run", default=None, metavar="'COMMAND ...'",
                    help="instead of training: a dynconv command line to run in the job, e.g. 'ablate --config c.yaml --out abl'")
    _add_resource_args(sb)
    sb.add_argument("--array", default=None, metavar="FILE.yaml", help="YAML list of override sets: one array element each")
    sb.add_argument("--max-parallel", type=int, default=None, help="array elements running at once")
    sb.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    sb.set_defaults(func=cmd_submit)

    jb = sub.add_parser("jobs", help="list submitted jobs: id, state, MLflow run, run folder")
    jb.add_argument("--folder", default="jobs")
    jb.set_defaults(func=cmd_jobs)

    lg = sub.add_parser("logs", help="print a submitted job's output")
    lg.add_argument("job_id")
    lg.add_argument("--folder", default="jobs")
    lg.add_argument("--task", type=int, default=0, help="task (rank) whose log to show")
    lg.add_argument("--stderr", action="store_true", help="the error stream instead of stdout")
    lg.set_defaults(func=cmd_logs)

    cn = sub.add_parser("cancel", help="cancel a submitted Slurm job")
    cn.add_argument("job_id")
    cn.add_argument("--folder", default="jobs")
    cn.set_defaults(func=cmd_cancel)
    sw = sub.add_parser("sweep", help="hyperparameter sweep with Ray Tune (ASHA, PBT), tracked in MLflow; writes best.yaml")
    sw.add_argument("--config", default=None, help="the base config (required unless --resume)")
    sw.add_argument("--space", default=None, help="search-space YAML, e.g. sweeps/spaces/dropout.yaml")
    sw.add_argument("--scheduler", default=None, help="asha (default), pbt or fifo")
    sw.add_argument("--search", default=None, help="random (default), grid or optuna")
    sw.add_argument("--num-samples", type=int, default=None,
                    help="trials (grid: repeats of the grid); default 10, grid 1")
    sw.add_argument("--max-concurrent", type=int, default=None, help="at most K trials at once (default: as resources allow)")
    sw.add_argument("--metric", default=None, help="worst_subset_acc (default), mean_subset_acc or acc_<subset>, maximised")
    sw.add_argument("--resources-per-trial", default=None, metavar="cpu=N,gpu=M", help="default cpu=1,gpu=0")
    sw.add_argument("--grace-period", type=int, default=None, help="ASHA: epochs before a trial can be stopped (default 1)")
    sw.add_argument("--reduction-factor", type=float, default=None, help="ASHA: keep 1/F of the trials per rung (default 3)")
    sw.add_argument("--perturbation-interval", type=int, default=None,
                    help="PBT: epochs between exploit/explore steps (default train.epochs // 4)")
    sw.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    sw.add_argument("--resume", action="store_true", help="continue the interrupted sweep in --out")
    sw.add_argument("--out", default="sweep-out", help="sweep folder (default sweep-out)")
    sw.add_argument("--ray-address", default=None, help="connect to this Ray cluster instead of starting a local one")
    sw.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    sw.add_argument("--verbose", action="store_true", help="Ray Tune's own progress tables instead of one line per trial")
    sw.add_argument("--on-slurm", action="store_true",
                    help="run the sweep as one submitit job (Ray head + workers on its nodes); takes the job options below")
    _add_resource_args(sw)
    sw.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    sw.set_defaults(func=cmd_sweep)

    d = sub.add_parser("demo", help="synthesise data, convert to FFCV, train, evaluate, log to MLflow")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--epochs", type=int, default=None)
    d.add_argument("--train-per-class", type=int, default=300)
    d.add_argument("overrides", nargs="*", metavar="dotted.key=value")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _warn_one_line
    for category in (DeprecationWarning, FutureWarning):  # libraries' notes to their developers, not to users
        warnings.filterwarnings("ignore", category=category)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DynconvError as e:
        print(f"dynconv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dynconv: interrupted (checkpoints written so far are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
