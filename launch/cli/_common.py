"""What several commands share: printing a training result, and the job-resource options of ``submit`` and
``sweep --on-slurm``."""
from __future__ import annotations

import argparse
import sys

from dynconv.choices import CLUSTERS


def print_result(result: dict) -> None:
    from ..report import print_table

    report = result["report"]
    for name, part in (report.get("datasets") or {None: report}).items():  # a mixture: a table per dataset
        where = f" of {name} ({part['channels']})" if name else ""
        print_table(part["subsets"], f"{report['model']} on {part['num_samples']} validation images{where}")
    s = report["summary"]
    print(f"mean subset accuracy {100 * s['mean_subset_acc']:.2f}%, worst {100 * s['worst_subset_acc']:.2f}%")
    print(f"checkpoint: {result['checkpoint']}")
    if result["run_id"]:
        print(f"MLflow run id: {result['run_id']}")
        print(f"  tracking URI: {result['tracking_uri']}")


def add_resource_args(p: argparse.ArgumentParser) -> None:
    """Where and with what a job runs: shared by ``submit`` and ``sweep --on-slurm``."""
    g = p.add_argument_group("job resources (submitit)")
    g.add_argument("--cluster", choices=CLUSTERS, default=None,
                   help="default: slurm where sbatch is on PATH, else local processes")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="one task per GPU")
    g.add_argument("--tasks-per-node", type=int, default=1, help="data-parallel processes per node without GPUs")
    g.add_argument("--cpus-per-task", type=int, default=1)
    g.add_argument("--mem", default=None, help="memory per node, e.g. 16G")
    g.add_argument("--time", type=int, default=60, help="walltime in minutes")
    g.add_argument("--partition", default=None,
                   help="partition, or a comma-separated list (Slurm starts the job on the first with room); "
                        "checked against sinfo: one that cannot hold the job (nodes, CPUs, GPUs, memory, time) is "
                        "dropped from a list, refused alone")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the limit Slurm sends USR2 (checkpoint + requeue)")
    g.add_argument("--name", default="dynconv", help="job name")
    g.add_argument("--folder", default="jobs", help="where submission folders go (mode 0700)")
    g.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    g.add_argument("--wait", action="store_true",
                   help="wait for the job(s) and print their results (always for local/debug); a Slurm job "
                        "still pending after 1 min prints why (squeue's reason), again every 5 min")


def resources(a: argparse.Namespace):
    from dynconv.slurm.executor import Resources

    return Resources(nodes=a.nodes, tasks_per_node=a.tasks_per_node, gpus_per_node=a.gpus_per_node,
                     cpus_per_task=a.cpus_per_task, mem=a.mem, time_min=a.time, partition=a.partition,
                     account=a.account, qos=a.qos, constraint=a.constraint,
                     max_parallel=getattr(a, "max_parallel", None), signal_delay_s=a.signal_delay, name=a.name)


def report_submission(out: dict, a: argparse.Namespace, cluster: str) -> int:
    """Print the script (dry run) or the job ids; wait for the results where asked (always off Slurm)."""
    if a.dry_run:
        print(out["script"], end="")
        return 0
    ids = [j.job_id for j in out["jobs"]]
    print(f"submitted {len(ids)} job(s) to {cluster}: {', '.join(ids)}  (folder {out['folder']})")
    if not (a.wait or cluster != "slurm"):
        print(f"follow with: dynconv jobs --folder {a.folder} | dynconv logs {ids[0]} --folder {a.folder}")
        return 0
    if cluster == "slurm":  # a job that has not started within a minute says why (Slurm's pending reason)
        from dynconv.slurm.submit import wait_reporting_pending

        wait_reporting_pending(out["jobs"])
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
