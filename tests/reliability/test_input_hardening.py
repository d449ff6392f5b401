"""No mistake runs silently: provenance that cannot lie, one run per output folder, bounded
YAML, operating-system errors and signals as one line, degenerate specifications refused with
the valid range. Every case asserts the exit code, that the message names the file or key, and
that the input files are byte-for-byte unchanged."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from ltscale.cli import main as cli
from ltscale.config.loading import recipe_from_dict
from ltscale.pipeline import run_pipeline
from ltscale.track import NullTracker
from tests.conftest import make_idx, tiny_pipeline_recipe
from tests.reliability.safety import refused, snapshot

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tiny_idx, tmp_path) -> dict:
    """A tiny whole-pipeline recipe file, its dataset built (``shards``) and a manifest."""
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "run", tmp_path / "shards")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli(["data", "build", "idx", str(tiny_idx), "--out", str(tmp_path / "shards")]) == 0
    assert cli(["manifest", "make", str(tmp_path / "shards"), "--noise", "sym:0.2",
                "--imbalance", "exp:2", "--seed", "3", "--out", str(tmp_path / "m.npz")]) == 0
    return {"recipe": path, "raw": raw, "idx": tiny_idx, "shards": tmp_path / "shards",
            "manifest": tmp_path / "m.npz", "out": tmp_path / "run", "tmp": tmp_path}


def _inputs(t: dict) -> tuple:
    return (t["recipe"], t["idx"], t["shards"], t["manifest"])


# --- provenance --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny pipeline run with two heads (finetune/ and finetune_ce/), shared by the
    provenance tests; a test that alters an encoder works on its own copy."""
    root = tmp_path_factory.mktemp("trained")
    idx = make_idx(root / "idx")
    raw = tiny_pipeline_recipe(idx, root / "run", root / "shards")
    raw["finetune"]["extra_losses"] = ["ce"]
    run_pipeline(recipe_from_dict(raw), NullTracker(), progress=False)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    return {"recipe": recipe, "out": root / "run", "idx": idx, "shards": root / "shards"}


def _head_on_copied_encoder(trained: dict, tmp_path: Path, **changes) -> tuple[Path, Path]:
    """A copy of the run's head pointing at a copy of its encoder (same bytes, same hash)."""
    saved = torch.load(trained["out"] / "finetune" / "head.pt", weights_only=True)
    encoder = tmp_path / "encoder.pt"
    shutil.copy(saved["encoder"], encoder)
    saved["encoder"] = str(encoder)
    saved.update(changes)
    head = tmp_path / "head.pt"
    torch.save(saved, head)
    return head, encoder


def test_a_head_records_its_encoders_sha256(trained):
    from ltscale.core.hashing import file_sha256

    for name in ("finetune", "finetune_ce"):
        saved = torch.load(trained["out"] / name / "head.pt", weights_only=True)
        assert saved["encoder_sha256"] == file_sha256(saved["encoder"])


def test_eval_refuses_a_head_whose_encoder_was_replaced(trained, tmp_path, capsys):
    head, encoder = _head_on_copied_encoder(trained, tmp_path)
    args = ["eval", trained["recipe"], "--from", head, "--no-track",
            f"output_dir={tmp_path / 'eval'}"]
    assert cli([str(a) for a in args]) == 0  # the untouched encoder evaluates
    enc = torch.load(encoder, weights_only=True)   # a later pretraining "starting afresh"
    enc["state_dict"] = {k: v + 1 if v.is_floating_point() else v
                         for k, v in enc["state_dict"].items()}
    torch.save(enc, encoder)
    inputs = (head, encoder, trained["recipe"], trained["shards"])
    before = snapshot(*inputs)
    refused(capsys, args, str(head), str(encoder), "SHA-256")
    assert snapshot(*inputs) == before
    encoder.unlink()
    refused(capsys, args, str(encoder), "no longer exists")


def test_eval_refuses_a_head_without_an_encoder_hash(trained, tmp_path, capsys):
    head, _ = _head_on_copied_encoder(trained, tmp_path, encoder_sha256=None)
    refused(capsys, ["eval", trained["recipe"], "--from", head, "--no-track",
                     f"output_dir={tmp_path / 'eval'}"], str(head), "no SHA-256")


@pytest.mark.parametrize("kind", ["head", "encoder"])
def test_from_an_ambiguous_folder_is_refused_naming_the_candidates(trained, tmp_path, capsys,
                                                                   kind):
    out = trained["out"]
    found = sorted(out.rglob(f"{kind}.pt"))
    if kind == "encoder":  # one pretrain encoder: a second copy makes the folder ambiguous
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        for d in ("a", "b"):
            shutil.copy(found[0], tmp_path / d / "encoder.pt")
        out, found = tmp_path, [tmp_path / "a" / "encoder.pt", tmp_path / "b" / "encoder.pt"]
    assert len(found) >= 2
    before = snapshot(out, trained["recipe"])
    command = "eval" if kind == "head" else "finetune"
    refused(capsys, [command, trained["recipe"], "--from", out, "--no-track",
                     f"output_dir={tmp_path / 'x'}"], f"{len(found)} {kind}.pt",
            *map(str, found))
    assert snapshot(out, trained["recipe"]) == before


def test_params_come_from_the_manifest_file_used(tiny, capsys, monkeypatch):
    """``--group-by manifest.noise`` groups by what the run trained on, not recipe defaults."""
    import ltscale.cli.common as cli_common
    import ltscale.stages.pretrain as pretrain

    params: dict = {}

    class Recording(NullTracker):
        def log_params(self, p):
            params.update(p)

    monkeypatch.setattr(cli_common, "tracker", lambda recipe, enabled=True: Recording())
    monkeypatch.setattr(pretrain, "run_pretrain",
                        lambda ctx: SimpleNamespace(encoder=ctx.out / "encoder.pt"))
    # the recipe says exp:4, sym:0.4, seed 0; the file was made with exp:2, sym:0.2, seed 3
    assert cli(["pretrain", str(tiny["recipe"]), f"manifest.file={tiny['manifest']}"]) == 0
    assert params["manifest.noise"] == "sym:0.2"
    assert params["manifest.imbalance"] == "exp:2"
    assert params["manifest.seed"] == 3
    assert params["manifest.file"] == str(tiny["manifest"])
    from ltscale.config.loading import load_recipe
    from ltscale.stages.context import effective_recipe

    r = effective_recipe(load_recipe(tiny["recipe"], [f"manifest.file={tiny['manifest']}"]))
    assert (r.manifest.noise, r.manifest.imbalance) == ("sym:0.2", "exp:2")  # report context


@pytest.mark.parametrize("case", ["missing", "other-source"])
def test_data_flag_applies_or_is_refused(tiny, capsys, case):
    if case == "missing":
        data, needle = tiny["tmp"] / "nowhere", "no such file or directory"
    else:
        data = tiny["tmp"] / "other-idx"
        data.mkdir()
        needle = "would be ignored"
    before = snapshot(*_inputs(tiny))
    refused(capsys, ["pretrain", tiny["recipe"], "--data", data, "--no-track"], f"--data {data}",
            needle)
    refused(capsys, ["run", tiny["recipe"], "--data", data, "--no-track"], f"--data {data}",
            needle)
    assert snapshot(*_inputs(tiny)) == before
    assert not tiny["out"].exists()


# --- one run per output folder -----------------------------------------------------------------
def test_a_second_run_into_a_locked_output_dir_is_refused(tiny, capsys):
    code = ("import sys, time; from ltscale.core.lock import output_lock\n"
            "with output_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tiny["out"])],
                              stdout=subprocess.PIPE, text=True,
                              env=os.environ | {"PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(*_inputs(tiny))
        for command in ("run", "pretrain"):
            refused(capsys, [command, tiny["recipe"], "--no-track"], str(tiny["out"]),
                    f"pid {holder.pid} on {socket.gethostname()}", "in use")
        assert snapshot(*_inputs(tiny)) == before
        assert not (tiny["out"] / "pretrain").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with its holder: the folder is usable again at once
    from ltscale.core.lock import output_lock
    with output_lock(tiny["out"]):
        pass


# --- signals and tracking ----------------------------------------------------------------------
def test_sigterm_ends_the_mlflow_runs_killed(tiny, capsys, monkeypatch):
    import mlflow

    import ltscale.stages.pretrain as pretrain

    def terminated(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(pretrain, "run_pretrain", terminated)
    uri = f"sqlite:///{tiny['tmp'] / 'mlflow.db'}"
    capsys.readouterr()
    assert cli(["pretrain", str(tiny["recipe"]), f"tracking.uri={uri}"]) == 143
    err = capsys.readouterr().err  # (MLflow logs its own INFO lines on creating the store)
    assert "ltscale: terminated (SIGTERM)" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and {r.info.status for r in runs} == {"KILLED"}


def test_an_unreachable_tracking_server_fails_fast_in_one_line(tiny, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    t = time.monotonic()
    refused(capsys, ["pretrain", tiny["recipe"], f"tracking.uri={uri}"], uri, "unreachable")
    assert time.monotonic() - t < 10
    assert not tiny["out"].exists()


# --- YAML --------------------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_refused_quickly_and_briefly(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    before = snapshot(bomb)
    t = time.monotonic()
    err = refused(capsys, ["run", bomb, "--no-track"], str(bomb), "aliases")
    assert time.monotonic() - t < 5 and len(err) < 600
    assert snapshot(bomb) == before


def test_a_huge_value_is_shortened_in_the_message(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"pretrain": {"epochs": "x" * 200_000}}))
    err = refused(capsys, ["pretrain", recipe, "--no-track"], "pretrain.epochs", one_line=False)
    assert len(err) < 1000


@pytest.mark.parametrize("text,needle", [
    ("", "is empty"), ("# only a comment\n", "is empty"), ("---\n", "is empty"),
    ("- a\n- b\n", "must be a mapping"), ("a: [1\n", "not valid YAML"),
    ("!!python/object:os.system {}\n", "not valid YAML"),
])
def test_empty_or_malformed_recipes_are_refused(tmp_path, capsys, text, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    refused(capsys, ["run", recipe, "--no-track"], str(recipe), needle)
    assert recipe.read_text() == text
    assert not (tmp_path / "runs").exists()


def test_recipe_too_large_or_not_text(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    refused(capsys, ["run", big, "--no-track"], str(big), "bytes")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    refused(capsys, ["run", binary, "--no-track"], str(binary), "UTF-8")
    refused(capsys, ["run", tmp_path, "--no-track"], str(tmp_path), "is a folder")


# --- operating-system errors --------------------------------------------------------------------
def test_a_symlink_loop_is_one_line(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    os.symlink(b, a)
    os.symlink(a, b)
    refused(capsys, ["run", a, "--no-track"], str(a))
    refused(capsys, ["manifest", "stats", a], str(a))
    refused(capsys, ["data", "build", "idx", a, "--out", tmp_path / "o"], str(a))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("code,gist", [
    (errno.EROFS, "read-only"), (errno.ENOSPC, "no space left"), (errno.EMLINK, "too many links"),
    (errno.ELOOP, "symbolic link loop"), (errno.EACCES, "permission denied"),
    (errno.EDQUOT, "quota"), (errno.EIO, "error"),
])
def test_os_errors_while_writing_are_one_line_naming_the_path(tiny, capsys, monkeypatch, code,
                                                             gist):
    from ltscale.data.manifest import Manifest

    target = tiny["tmp"] / "new.npz"

    def fail(self, path):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(Manifest, "save", fail)
    before = snapshot(tiny["shards"])
    line = refused(capsys, ["manifest", "make", tiny["shards"], "--out", target], str(target))
    assert gist in line.lower()
    assert snapshot(tiny["shards"]) == before and not target.exists()


def test_a_closed_stdout_is_one_line(tiny):
    proc = subprocess.Popen([sys.executable, "-m", "ltscale", "manifest", "stats",
                             str(tiny["manifest"])], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(REPO)})
    proc.stdout.close()  # the reader is gone before anything is printed (`| head -0`)
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 2, err
    assert "Traceback" not in err and "broken pipe" in err and len(err.splitlines()) == 1


# --- degenerate specifications ------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--imbalance", "exp:1000", "--max-per-class", "10"], "with no image"),
    (["--imbalance", "step:100", "--max-per-class", "10"], "with no image"),
    (["--imbalance", "pareto:500", "--max-per-class", "20"], "with no image"),
    (["--seed", "-1"], "seed"),
    (["--seed", str(2**40)], "seed"),
    (["--max-per-class", "0"], "max_per_class"),
    (["--few-labels", "0"], "few_labels"),
    (["--few-labels", "1.5"], "few_labels"),
    (["--unlabeled-multiple", "-1"], "unlabeled multiple"),
    (["--unlabeled-ratio", "0.5"], "ρ_U"),
    (["--relevance", "2"], "relevance"),
    (["--noise", "sym:1.5"], "noise rate"),
    (["--noise", "sym:-0.1"], "noise rate"),
    (["--noise", "sym:0.2:some"], "convention"),
    (["--noise", "asym:0.2"], "asym"),
    (["--imbalance", "exp:0.5"], "γ"),
    (["--imbalance", "exp"], "not understood"),
    (["--imbalance", "exp:ten"], "not a number"),
    (["--test", "test:0"], "PER_CLASS"),
    (["--val", ":5"], "selection"),
    (["--val", "nosuchsplit"], "nosuchsplit"),
    (["--split", "nosuchsplit"], "nosuchsplit"),
])
def test_degenerate_manifest_specs_are_refused(tiny, capsys, args, needle):
    out = tiny["tmp"] / "bad.npz"
    before = snapshot(tiny["shards"])
    refused(capsys, ["manifest", "make", tiny["shards"], *args, "--out", out], needle)
    assert not out.exists() and snapshot(tiny["shards"]) == before


@pytest.mark.parametrize("override,key", [
    ("manifest.imbalance=exp:1000", "with no image"),
    ("seed=-1", "seed"),
    ("seeds=[0, -3]", "seeds"),
    ("manifest.seed=-5", "manifest.seed"),
    ("pretrain.epochs=0", "pretrain.epochs"),
    ("pretrain.batch_size=-8", "pretrain.batch_size"),
    ("data.image_size=0", "data.image_size"),
    ("eval.many_threshold=-1", "eval.many_threshold"),
    ("manifest.test=test:0", "PER_CLASS"),
    ("manifest.noise=sym:2", "manifest.noise"),
    ("pretrain.epochs", "key.sub=value"),
    ("seed.x=1", "seed: Input should be a valid integer"),
    ("pretrain.optim.lrr=0.1", "pretrain.optim.lrr"),
    ("data.channels=2", "data.channels"),
])
def test_degenerate_recipe_values_are_refused_before_any_work(tiny, capsys, override, key):
    before = snapshot(*_inputs(tiny))
    refused(capsys, ["run", tiny["recipe"], override, "--no-track"], key, one_line=False)
    assert snapshot(*_inputs(tiny)) == before
    assert not list(tiny["out"].rglob("*.pt"))


@pytest.mark.parametrize("args,needle", [
    (["--time", "99:99:99"], "0-59"),
    (["--time", "1-25:00:00"], "0-23"),
    (["--time", "10:75"], "0-59"),
    (["--time", "0"], "at least one minute"),
    (["--time", "soon"], "--time"),
    (["--signal-delay", "-5"], "--signal-delay -5"),
    (["--time", "10", "--signal-delay", "600"], "--signal-delay 600"),
    (["--max-requeue", "-1"], "--max-requeue -1"),
    (["--cpus-per-task", "0"], "--cpus-per-task 0"),
    (["--nodes", "0"], "--nodes"),
    (["--gpus-per-node", "-1"], "--gpus-per-node"),
    (["--tasks-per-node", "0"], "--tasks-per-node"),
    (["--mem", "lots"], "--mem"),
    (["--name", "my job; rm -rf"], "--name"),
    (["--sbatch-option", "novalue"], "NAME=VALUE"),
])
def test_submit_values_that_make_no_sense_for_slurm_are_refused(tiny, capsys, args, needle):
    before = snapshot(*_inputs(tiny))
    refused(capsys, ["submit", tiny["recipe"], *args, "--dry-run"], needle)
    assert snapshot(*_inputs(tiny)) == before


def test_submit_sbatch_file_over_the_recipe_is_refused(tiny, capsys):
    before = snapshot(*_inputs(tiny))
    refused(capsys, ["submit", tiny["recipe"], "--sbatch", tiny["recipe"]], str(tiny["recipe"]))
    assert snapshot(*_inputs(tiny)) == before


@pytest.mark.parametrize("args,needle", [
    (["data", "build", "idx", "IDX", "--out", "NEW", "--workers", "-2"], "--workers -2"),
    (["data", "build", "idx", "IDX", "--out", "NEW", "--shard-size", "0"], "shard size"),
    (["data", "build", "idx", "IDX", "--out", "NEW", "--shard-size", "lots"], "shard size"),
    (["data", "build", "idx", "IDX", "--out", "NEW", "--option", "x"], "NAME=VALUE"),
    (["data", "build", "idx", "TMP/none", "--out", "NEW"], "none"),
    (["data", "verify", "SHARDS", "--max-problems", "-1"], "--max-problems -1"),
    (["data", "verify", "TMP/none"], "none"),
    (["manifest", "stats", "TMP/none.npz"], "none.npz"),
    (["manifest", "diff", "M", "TMP/none.npz"], "none.npz"),
    (["manifest", "make", "TMP/none", "--out", "TMP/x.npz"], "none"),
])
def test_cli_typos_are_refused(tiny, capsys, args, needle):
    sub = {"IDX": str(tiny["idx"]), "NEW": str(tiny["tmp"] / "new"), "SHARDS": str(tiny["shards"]),
           "M": str(tiny["manifest"]), "TMP": str(tiny["tmp"])}
    argv = [a if a not in sub else sub[a] for a in args]
    argv = [a.replace("TMP", sub["TMP"]) if a.startswith("TMP") else a for a in argv]
    before = snapshot(*_inputs(tiny))
    refused(capsys, argv, needle)
    assert snapshot(*_inputs(tiny)) == before
    assert not (tiny["tmp"] / "new").exists()


@pytest.mark.parametrize("where", ["shards", "shards/run", "idx", "idx/run"])
def test_an_output_dir_inside_the_data_is_refused(tiny, capsys, where):
    out = {"shards": tiny["shards"], "shards/run": tiny["shards"] / "run", "idx": tiny["idx"],
           "idx/run": tiny["idx"] / "run"}[where]
    before = snapshot(*_inputs(tiny))
    refused(capsys, ["pretrain", tiny["recipe"], f"output_dir={out}", "--no-track"],
            f"output_dir {out}", "data.s")
    assert snapshot(*_inputs(tiny)) == before
    assert not (tiny["shards"] / "run").exists() and not (tiny["idx"] / "run").exists()
