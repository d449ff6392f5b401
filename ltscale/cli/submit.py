"""`ltscale submit`: a recipe as a SLURM job (a job array for a sweep) through submitit."""

from __future__ import annotations

import argparse
import sys

from ltscale.cli import common


def add_parser(sub) -> argparse.ArgumentParser:
    sm = sub.add_parser("submit", help="a recipe as a SLURM job (job array for a sweep) "
                        "through submitit")
    sm.add_argument("recipe")
    sm.add_argument("overrides", nargs="*", help="key.sub=value recipe overrides")
    sm.add_argument("--command", dest="command_name", default="run", choices=["run", "pretrain"],
                    help="the ltscale command every task runs (default: run)")
    sm.add_argument("--nodes", type=int, default=1)
    sm.add_argument("--gpus-per-node", type=int, default=0)
    sm.add_argument("--tasks-per-node", type=int, default=None,
                    help="processes per node (default: one per GPU, or 1 without GPUs)")
    sm.add_argument("--cpus-per-task", type=int, default=None)
    sm.add_argument("--partition", default=None)
    sm.add_argument("--time", default="60", help="time limit: minutes or [D-]HH:MM:SS")
    sm.add_argument("--account", default=None)
    sm.add_argument("--qos", default=None)
    sm.add_argument("--constraint", default=None)
    sm.add_argument("--mem", default=None, help="memory per node, SLURM syntax (e.g. 64G)")
    sm.add_argument("--name", default=None, help="job name (default: ltscale)")
    sm.add_argument("--sbatch-option", action="append", default=[], metavar="KEY=VALUE",
                    help="a further #SBATCH setting, e.g. exclusive=user (repeatable)")
    sm.add_argument("--signal-delay", type=int, default=90,
                    help="seconds before the time limit the job is signalled to requeue")
    sm.add_argument("--max-requeue", type=int, default=3,
                    help="how many timeouts/preemptions a job may survive")
    sm.add_argument("--sweep", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="sweep axes (e.g. seed=0,1,2 manifest.noise=sym:0.2,sym:0.4): one "
                    "array task per point of their product")
    sm.add_argument("--cluster", default="slurm", choices=["slurm", "local"],
                    help="slurm, or local: the same job code on this machine (submitit's "
                    "LocalExecutor)")
    sm.add_argument("--folder", default="runs/submitit",
                    help="submitit's folder: logs, pickles, jobs.jsonl (shared with the nodes)")
    sm.add_argument("--data", help="folder of the raw dataset (sets data.source.path)")
    sm.add_argument("--dry-run", action="store_true", help="print what would be submitted")
    sm.add_argument("--sbatch", metavar="FILE", help="write an srun + torchrun batch script "
                    "for these options instead of submitting")
    sm.add_argument("--wait", action="store_true", help="wait for the jobs and report them")
    sm.set_defaults(func=cmd_submit)
    return sm


def _check_sbatch_file(path: str, inputs) -> None:
    """``--sbatch FILE`` never lands on an input, and replaces only a script it rendered."""
    from pathlib import Path

    from ltscale.core.errors import LtscaleError
    from ltscale.data.ownership import check_output_path

    check_output_path(path, [i for i in inputs if i], "--sbatch")
    f = Path(path)
    if f.is_dir():
        raise LtscaleError(f"--sbatch {path} is a folder; name the script file")
    if f.exists():
        try:
            ours = "Rendered by `ltscale submit" in f.read_text(errors="replace")[:2000]
        except OSError:
            ours = False
        if not ours:
            raise LtscaleError(f"--sbatch {path} exists and is not a script ltscale rendered; "
                               "choose another file (nothing was changed)")


def cmd_submit(args):
    from pathlib import Path

    from ltscale.launch.options import SubmitOptions, parse_time
    from ltscale.launch.submit import dry_run_text, plan_submission, submit
    from ltscale.launch.templates import render_sbatch

    if args.sbatch:
        _check_sbatch_file(args.sbatch, [args.recipe, args.data])
    extra = common.options(args.sbatch_option) if args.sbatch_option else {}
    opts = SubmitOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
                         partition=args.partition, time_min=parse_time(args.time),
                         account=args.account, qos=args.qos, constraint=args.constraint,
                         mem=args.mem, name=args.name or "ltscale",
                         signal_delay_s=args.signal_delay, max_requeue=args.max_requeue,
                         extra={k.replace("_", "-"): v for k, v in extra.items()})
    overrides = list(args.overrides)
    if args.data:
        from ltscale.config.loading import load_recipe

        overrides.append(f"data.source.path={args.data}")
        common.check_data_flag(load_recipe(args.recipe, overrides), args.data)
    plan = plan_submission(args.command_name, args.recipe, overrides, args.sweep, opts,
                           cluster=args.cluster, folder=args.folder,
                           dry_run=args.dry_run or bool(args.sbatch))
    if args.sbatch:
        from ltscale.core.atomic import write_text_atomic

        write_text_atomic(args.sbatch, render_sbatch(opts, plan.argvs))
        Path(args.sbatch).chmod(0o755)
        print(f"wrote {args.sbatch} (srun + torchrun; submit it with: sbatch {args.sbatch})")
        return 0
    if args.dry_run:
        print(dry_run_text(plan))
        return 0
    submitted = submit(plan)
    print("\n".join(submitted.lines()))
    jobs = submitted.jobs
    if args.wait:
        from ltscale.launch.submit import wait_for

        wait_for(jobs, plan.cluster)
        failed = 0
        for job in jobs:
            try:
                job.results()
                print(f"job {job.job_id}: done")
            except Exception as exc:  # noqa: BLE001 - report every job, then the status
                failed += 1
                print(f"job {job.job_id}: failed: {str(exc).strip().splitlines()[-1]}",
                      file=sys.stderr)
        return 1 if failed else 0
    return 0
