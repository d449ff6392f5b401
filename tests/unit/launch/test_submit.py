"""`ltscale submit` without a cluster: sweep keys, dry runs, the sbatch templates kept in step
with submitit's script, the checks made before anything is queued, and the job environment."""

import os
import shlex
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ltscale.cli import main
from ltscale.config.loading import load_recipe
from ltscale.core.errors import RecipeError
from ltscale.launch.job import LtscaleJob, dist_environ, master_port
from ltscale.launch.options import SubmitOptions, parse_time
from ltscale.launch.submit import plan_submission, submitit_sbatch
from ltscale.launch.sweep_args import check_sweep_keys, parse_sweep
from ltscale.launch.templates import parse_directives, render_sbatch

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def _recipe(tmp_path, **extra) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text()) | {"output_dir": str(tmp_path / "out")} | extra
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_sweep_values_are_yaml_split_on_top_level_commas():
    assert parse_sweep(["seed=0,1,2", "manifest.noise=sym:0.2,sym:0.4", "data.mean=[0.5],[0.3]"]) \
        == {"seed": [0, 1, 2], "manifest.noise": ["sym:0.2", "sym:0.4"],
            "data.mean": [[0.5], [0.3]]}
    with pytest.raises(RecipeError, match="given twice"):
        parse_sweep(["seed=0", "seed=1"])
    with pytest.raises(RecipeError, match="KEY=V1,V2"):
        parse_sweep(["seed"])


def test_unknown_sweep_key_is_refused_with_the_valid_keys():
    recipe = load_recipe(QUICKSTART)
    check_sweep_keys({"seed": [0], "manifest.noise": ["sym:0.2"]}, recipe)
    with pytest.raises(RecipeError) as err:
        check_sweep_keys({"manifest.nosie": ["sym:0.2"]}, recipe)
    text = str(err.value)
    assert "manifest.nosie" in text and "did you mean manifest.noise" in text
    assert "valid keys of manifest:" in text and "manifest.imbalance" in text
    with pytest.raises(RecipeError, match="valid recipe sections: .*pretrain"):
        check_sweep_keys({"noise.rate": [0.2]}, recipe)


def test_cli_sweep_becomes_one_array_task_per_point(tmp_path):
    path = _recipe(tmp_path)
    plan = plan_submission("run", path, ["pretrain.epochs=1"],
                           ["seed=0,1,2", "manifest.noise=sym:0.2,sym:0.4"],
                           SubmitOptions(), dry_run=True)
    assert len(plan.argvs) == 6
    assert [r.seed for r in plan.recipes] == [0, 0, 1, 1, 2, 2]
    assert [r.manifest.noise for r in plan.recipes] == ["sym:0.2", "sym:0.4"] * 3
    assert len({r.output_dir for r in plan.recipes}) == 6
    for argv, recipe in zip(plan.argvs, plan.recipes):
        assert argv[:3] == ["run", str(path), "pretrain.epochs=1"]
        # each task's command line rebuilds exactly its point's recipe
        assert load_recipe(path, argv[2:]) == recipe
    assert "#SBATCH --array=0-5%6" in submitit_sbatch(plan)


def test_recipe_sweep_and_cli_sweep_combine(tmp_path):
    path = _recipe(tmp_path, sweep={"finetune.loss.name": ["ce", "la_sl"]})
    plan = plan_submission("run", path, [], ["seed=0,1"], SubmitOptions(), dry_run=True)
    assert [(r.finetune.loss.name, r.seed) for r in plan.recipes] == [
        ("ce", 0), ("ce", 1), ("la_sl", 0), ("la_sl", 1)]
    assert all(r.sweep == {} for r in plan.recipes)


def test_dry_run_of_two_nodes_prints_the_submitit_script(tmp_path, capsys):
    path = _recipe(tmp_path)
    rc = main(["submit", str(path), "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
               "--time", "12:00:00", "--account", "lt", "--folder", str(tmp_path / "sub"),
               "--dry-run", "pretrain.checkpoint_every=100"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 node(s) × 4 task(s) = 8 processes" in out
    d = parse_directives(out)
    assert d["nodes"] == "2" and d["ntasks-per-node"] == "4" and d["gpus-per-node"] == "4"
    assert d["partition"] == "gpu" and d["account"] == "lt" and d["time"] == "720"
    assert d["signal"] == "USR2@90" and "array" not in d
    assert f"ltscale run {path} pretrain.checkpoint_every=100" in out
    assert not (tmp_path / "sub").exists()  # nothing queued, nothing written


def test_template_and_submitit_ask_slurm_for_the_same(tmp_path):
    opts = SubmitOptions(nodes=3, gpus_per_node=2, partition="p", time_min=95, account="a",
                         qos="high", constraint="a100", mem="64G", extra={"exclusive": "user"})
    path = _recipe(tmp_path)
    plan = plan_submission("pretrain", path, [], ["seed=0,1,2"], opts, dry_run=True)
    ours = parse_directives(render_sbatch(opts, plan.argvs))
    theirs = parse_directives(submitit_sbatch(plan))
    shared = {"job-name", "nodes", "gpus-per-node", "partition", "time", "account", "qos",
              "constraint", "mem", "exclusive", "array", "open-mode"}
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    assert ours["signal"] == "B:" + theirs["signal"]      # the batch shell traps it to requeue
    assert theirs["ntasks-per-node"] == "2" and ours["ntasks-per-node"] == "1"  # torchrun ×2
    script = render_sbatch(opts, plan.argvs)
    for i, argv in enumerate(plan.argvs):  # every array task runs submitit's command line
        assert f"  {i}) ARGS=({shlex.join(argv)}) ;;" in script
    assert "--nproc-per-node=2" in script and "scontrol requeue" in script


@pytest.mark.parametrize("name, opts, points", [
    ("pretrain-2x4gpu.sbatch",
     SubmitOptions(nodes=2, gpus_per_node=4, cpus_per_task=8, partition="gpu", time_min=720),
     [["pretrain", "recipes/quickstart.yaml", "pretrain.checkpoint_every=200"]]),
    ("sweep-noise-seeds.sbatch",
     SubmitOptions(nodes=1, gpus_per_node=1, cpus_per_task=8, partition="gpu", time_min=240,
                   name="ltscale-sweep"),
     [["run", "recipes/quickstart.yaml", f"manifest.noise={n}", f"seed={s}",
       f"output_dir=runs/sweep/noise{n}-seed{s}"] for n in ("sym:0.2", "sym:0.4")
      for s in (0, 1, 2)]),
])
def test_checked_in_sbatch_files_are_what_the_renderer_writes(name, opts, points):
    assert (REPO / "slurm" / name).read_text() == render_sbatch(opts, points)


def test_sbatch_option_writes_a_runnable_script(tmp_path, capsys):
    path = _recipe(tmp_path)
    out = tmp_path / "job.sbatch"
    assert main(["submit", str(path), "--nodes", "2", "--gpus-per-node", "2", "--sbatch",
                 str(out)]) == 0
    text = out.read_text()
    assert text.startswith("#!/bin/bash") and os.access(out, os.X_OK)
    assert parse_directives(text)["nodes"] == "2"
    assert f"ARGS=(run {path})" in text


def _no_sbatch_path(tmp_path) -> str:
    empty = tmp_path / "bin"
    empty.mkdir(exist_ok=True)
    return str(empty)


def test_missing_sbatch_is_refused_before_anything_is_queued(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _no_sbatch_path(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = main(["submit", str(_recipe(tmp_path)), "--folder", str(tmp_path / "sub")])
    assert rc == 2
    assert "sbatch not found on PATH" in capsys.readouterr().err
    assert not (tmp_path / "sub").exists()


def test_unknown_partition_is_refused_naming_the_partitions(tmp_path, monkeypatch, capsys):
    bin_dir = Path(_no_sbatch_path(tmp_path))
    for tool, body in (("sbatch", "echo 'Submitted batch job 1'"),
                       ("sinfo", "printf 'debug*\\ngpu\\n'")):
        (bin_dir / tool).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    rc = main(["submit", str(_recipe(tmp_path)), "--partition", "gpux",
               "--folder", str(tmp_path / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and "--partition gpux: no such partition; this cluster has debug, gpu" in err
    assert not (tmp_path / "sub").exists()


def test_unreachable_tracking_server_is_refused(tmp_path, monkeypatch, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    rc = main(["submit", str(_recipe(tmp_path)), "--cluster", "local",
               "--folder", str(tmp_path / "sub")])
    err = capsys.readouterr().err
    assert rc == 2 and f"MLflow tracking server http://127.0.0.1:{port} is unreachable" in err
    assert not (tmp_path / "sub").exists()


def test_unknown_sweep_key_fails_the_cli_before_submitting(tmp_path, capsys):
    rc = main(["submit", str(_recipe(tmp_path)), "--sweep", "finetune.lr=0.1,0.01",
               "pretrain.optim.learning_rate=0.1,0.2", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "pretrain.optim.learning_rate" in err and "pretrain.optim.lr" in err


def test_time_limits_parse_to_minutes():
    assert [parse_time(t) for t in ("90", "1:30:00", "45:30", "2-00:00:00", "0:00:30")] == \
        [90, 90, 46, 2880, 1]
    with pytest.raises(RecipeError, match="--time"):
        parse_time("soon")


def test_job_environment_becomes_torch_distributed_variables(monkeypatch):
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    env = SimpleNamespace(global_rank=5, num_tasks=8, local_rank=1, job_id="123456",
                          hostnames=["node07", "node08"])
    assert dist_environ(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
                                 "MASTER_ADDR": "node07", "MASTER_PORT": str(20000 + 3456)}
    assert master_port("77_3") == 20000 + 773
    job = LtscaleJob(["pretrain", "r.yaml"], "/tmp/f")
    again = job.checkpoint()  # a requeue runs the same command, holding no training state
    assert again.function.argv == job.argv and again.function is not job
