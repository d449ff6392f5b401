"""``ltscale submit``: an ltscale command as a SLURM job (or a job array for a sweep) through
submitit, one task per GPU.

``plan_submission`` resolves everything that can be wrong before a job exists: the recipe and
every sweep point (each validated as a recipe of its own), the sweep keys, and — unless it is a
dry run — ``sbatch``, the partition and the tracking server. ``submit`` hands the plan to
submitit (``SlurmExecutor``, or ``LocalExecutor`` for ``--cluster local``: the same job code on
this machine), prints job ids and log paths and appends them to ``<folder>/jobs.jsonl``.
``dry_run_text`` shows the sbatch script submitit would queue, without queueing it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ltscale.config.loading import load_recipe
from ltscale.config.schema import Recipe
from ltscale.config.sweeps import expand, point_label, point_overrides
from ltscale.core.atomic import write_text_atomic
from ltscale.launch.options import SubmitOptions
from ltscale.launch.preflight import check_partition, check_sbatch
from ltscale.launch.sweep_args import check_sweep_keys, parse_sweep
from ltscale.track.store import check_tracking

COMMANDS = ("run", "pretrain")


@dataclass
class Plan:
    command: str
    recipe_path: Path
    argvs: list[list[str]]           # one ltscale command line per job (array task)
    labels: list[str]                # the sweep point of each ("base" without a sweep)
    recipes: list[Recipe]
    opts: SubmitOptions
    cluster: str                     # slurm | local
    folder: Path                     # submitit's folder; jobs.jsonl and MLflow ledgers live here
    tracking_uri: str
    notes: list[str] = field(default_factory=list)

    @property
    def job_folder(self) -> Path:
        return self.folder / "%j"


def _tracking_uri(recipe: Recipe) -> str:
    from ltscale.track import default_tracking_uri

    return recipe.tracking.uri or default_tracking_uri()


def plan_submission(command: str, recipe_path: str | Path, overrides: list[str],
                    sweep: list[str], opts: SubmitOptions, *, cluster: str = "slurm",
                    folder: str | Path = "runs/submitit", dry_run: bool = False) -> Plan:
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    recipe_path = Path(recipe_path).resolve()
    overrides = list(overrides)
    base = load_recipe(recipe_path, overrides)
    axes = parse_sweep(sweep)
    check_sweep_keys(axes, base)
    merged = dict(base.sweep) | axes
    if merged:
        points = expand(recipe_path, overrides + [f"sweep={json.dumps(merged)}"])
        argvs, labels, recipes = [], [], []
        for point, recipe in points:
            argvs.append([command, str(recipe_path), *overrides, *point_overrides(point),
                          "sweep={}", "reference=null",
                          f"output_dir={json.dumps(recipe.output_dir)}"])
            labels.append(point_label(point))
            recipes.append(recipe)
    else:
        argvs, labels, recipes = [[command, str(recipe_path), *overrides]], ["base"], [base]
    uri = _tracking_uri(base)
    if cluster == "local" and opts.nodes > 1:
        raise ValueError("--cluster local runs on this machine: use --nodes 1")
    if not dry_run:
        check_tracking(uri)
        if cluster == "slurm":
            check_sbatch()
            check_partition(opts.partition)
    plan = Plan(command, recipe_path, argvs, labels, recipes, opts, cluster,
                Path(folder).resolve(), uri)
    if all(r.pretrain.checkpoint_every == 0 for r in recipes):
        plan.notes.append("pretrain.checkpoint_every is 0: a job warned by the time-limit "
                          "signal saves its current step, but one killed without warning (node "
                          "failure, scontrol requeue) resumes from the last epoch end; set it to "
                          "lose at most that many steps")
    return plan


def slurm_parameters(opts: SubmitOptions) -> dict:
    """``SlurmExecutor.update_parameters`` keywords for ``opts``."""
    params = {"job_name": opts.name, "nodes": opts.nodes, "ntasks_per_node": opts.ntasks_per_node,
              "time": opts.time_min, "signal_delay_s": opts.signal_delay_s,
              "array_parallelism": opts.array_parallelism}
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    for key in ("cpus_per_task", "partition", "account", "qos", "constraint"):
        if getattr(opts, key):
            params[key] = getattr(opts, key)
    extra = dict(opts.extra)
    if opts.mem:
        extra["mem"] = opts.mem   # SLURM syntax passed through (submitit's own mem is in GB)
    if extra:
        params["additional_parameters"] = extra
    return params


def submitit_command(folder: Path) -> str:
    """The command submitit's sbatch script runs in every task."""
    return " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                     shlex.quote(str(folder))])


def submitit_sbatch(plan: Plan) -> str:
    """The batch script ``SlurmExecutor`` writes for ``plan`` (rendered without a cluster)."""
    from submitit.slurm.slurm import _make_sbatch_string

    n = len(plan.argvs)
    return _make_sbatch_string(command=submitit_command(plan.job_folder), folder=plan.job_folder,
                               map_count=n if n > 1 else None, **slurm_parameters(plan.opts))


def dry_run_text(plan: Plan) -> str:
    o = plan.opts
    n = len(plan.argvs)
    head = (f"ltscale submit (dry run, nothing queued): {n} job{'s' if n > 1 else ''}"
            f"{' as a job array' if n > 1 and plan.cluster == 'slurm' else ''} on {plan.cluster}, "
            f"{o.nodes} node(s) × {o.ntasks_per_node} task(s) = {o.world_size} processes each, "
            f"time limit {o.time_min} min, up to {o.max_requeue} requeues")
    lines = [head, f"tracking: {plan.tracking_uri}", f"logs: {plan.job_folder}"]
    for i, (argv, label) in enumerate(zip(plan.argvs, plan.labels)):
        where = f" [{label}]" if n > 1 else ""
        lines.append(f"  task {i}{where}: ltscale {shlex.join(argv)}")
    lines += [f"note: {note}" for note in plan.notes]
    if plan.cluster == "slurm":
        lines += ["--- sbatch script (submitit) ---", submitit_sbatch(plan).rstrip()]
    return "\n".join(lines)


def make_executor(plan: Plan):
    import submitit

    o = plan.opts
    if plan.cluster == "local":
        ex = submitit.LocalExecutor(plan.job_folder, max_num_timeout=o.max_requeue)
        ex.update_parameters(timeout_min=o.time_min, tasks_per_node=o.ntasks_per_node, nodes=1,
                             gpus_per_node=o.gpus_per_node, signal_delay_s=o.signal_delay_s)
    else:
        ex = submitit.SlurmExecutor(plan.job_folder, max_num_timeout=o.max_requeue)
        ex.update_parameters(**slurm_parameters(o))
    return ex


@dataclass
class Submission:
    """What ``submit`` queued: submitit ``Job`` objects (one per sweep point) and their records
    (the lines appended to ``<folder>/jobs.jsonl``)."""
    jobs: list
    records: list[dict]
    journal: Path
    notes: list[str]

    def lines(self) -> list[str]:
        """What ``ltscale submit`` prints: each job with its command and log file."""
        out = []
        for rec in self.records:
            label = "" if rec["label"] == "base" else f" [{rec['label']}]"
            out += [f"submitted job {rec['job_id']}{label}: ltscale {shlex.join(rec['argv'])}",
                    f"  logs: {rec['stdout']}"]
        return out + [f"job records: {self.journal}"] + [f"note: {n}" for n in self.notes]


def submit(plan: Plan) -> Submission:
    """Queue the plan's jobs and append their records to ``<folder>/jobs.jsonl``."""
    from ltscale.launch.job import LtscaleJob

    ex = make_executor(plan)
    plan.folder.mkdir(parents=True, exist_ok=True)
    calls = [LtscaleJob(argv, plan.folder) for argv in plan.argvs]
    if len(calls) == 1:
        jobs = [ex.submit(calls[0])]
    else:
        with ex.batch():
            jobs = [ex.submit(call) for call in calls]
    records = []
    for job, argv, label in zip(jobs, plan.argvs, plan.labels):
        records.append({"job_id": str(job.job_id), "cluster": plan.cluster, "label": label,
                        "argv": argv, "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr), "nodes": plan.opts.nodes,
                        "tasks_per_node": plan.opts.ntasks_per_node,
                        "tracking_uri": plan.tracking_uri, "submitted_at": time.time()})
    record_jobs(plan.folder / "jobs.jsonl", records)
    placeholder = plan.job_folder  # submitit may leave the unexpanded "%j" folder behind, empty
    if placeholder.is_dir() and not any(placeholder.iterdir()):
        placeholder.rmdir()
    return Submission(jobs, records, plan.folder / "jobs.jsonl", list(plan.notes))


def record_jobs(path: Path, records: list[dict]) -> None:
    """Append one JSON line per job to ``path`` (the file is replaced atomically)."""
    old = path.read_text() if path.exists() else ""
    write_text_atomic(path, old + "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _in_queue(job_id: str) -> bool:
    import subprocess

    proc = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%i %T"],
                          capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool(proc.stdout.strip())


def wait_for(jobs: list, cluster: str, poll_s: float = 1.0, timeout_s: float | None = None) -> None:
    """Block until every job has written its result or left the queue. For SLURM this asks
    ``squeue`` (submitit's own watcher needs ``sacct``, i.e. accounting, which small clusters
    may not run); a requeued job stays in the queue and is waited for."""
    start = time.time()
    for job in jobs:
        tasks = [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]
        while not all(t.paths.result_pickle.exists() for t in tasks):
            if cluster == "slurm" and not _in_queue(str(job.job_id)):
                break
            if cluster == "local" and job.done():
                break
            if timeout_s is not None and time.time() - start > timeout_s:
                raise TimeoutError(f"job {job.job_id} still running after {timeout_s:.0f} s")
            time.sleep(poll_s)
