"""Issue 29, hangs and tracebacks: each failure below ends in seconds with one line naming the
file, key or cause, the exit status the README gives, and the MLflow runs closed.

* ``compare`` / ``export`` against a tracking server that does not answer, or a damaged store;
* the disk filling during a checkpoint save (the previous checkpoint stays the newest);
* ``device: cuda`` without a GPU, ``data.mean`` / ``data.std`` that do not fit
  ``data.channels``, a zero standard deviation, ``eval`` of a head trained on another dataset;
* SIGTERM / SIGINT to the whole process group mid-pretraining (loader workers included), and a
  run left RUNNING by ``kill -9``, marked KILLED when its output folder is next used;
* the MLflow UI: experiments open on the runs table, each stage's manifest is its dataset.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from ltscale.cli import main as cli
from ltscale.core import torch_file as checkpoint  # the file every checkpoint is written through
from ltscale.track import NullTracker
from tests.conftest import FailingFile, tiny_pipeline_recipe
from tests.reliability.safety import refused

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (seconds), copied by each test that tracks."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tiny(tiny_idx, tmp_path, empty_store) -> dict:
    """A tiny recipe file (pretraining without the kNN monitor) tracking into a SQLite store in
    ``tmp_path``, its dataset built."""
    raw = tiny_pipeline_recipe(tiny_idx, tmp_path / "run", tmp_path / "shards")
    raw["pretrain"]["knn"]["enabled"] = False
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    raw["tracking"] = {"uri": uri, "experiment": "issue29"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert cli(["data", "build", "idx", str(tiny_idx), "--out", str(tmp_path / "shards")]) == 0
    return {"recipe": path, "raw": raw, "idx": tiny_idx, "shards": tmp_path / "shards",
            "out": tmp_path / "run", "tmp": tmp_path, "uri": uri}


def _runs(uri: str) -> list:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _dead_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- commands that talk to a tracking server ---------------------------------------------------
def test_compare_and_export_fail_in_seconds_on_a_server_that_does_not_answer(
        tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # MLflow's own retries would take minutes: cut them so that code without the check fails
    # this test quickly instead of hanging it (the check itself does not depend on them)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = f"http://127.0.0.1:{_dead_port()}"
    for argv in (["compare", "exp", "--tracking-uri", uri],
                 ["export", "3f2a9c0b1d", "--tracking-uri", uri],
                 ["finetune", tmp_path / "r.yaml", "--from", "3f2a9c0b1d", "--no-track"]):
        if argv[0] == "finetune":
            (tmp_path / "r.yaml").write_text(f"tracking: {{uri: '{uri}'}}\n")
        t = time.monotonic()
        refused(capsys, argv, uri, "unreachable")
        assert time.monotonic() - t < 10
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # the same through the environment
    t = time.monotonic()
    refused(capsys, ["compare", "exp"], uri, "unreachable")
    assert time.monotonic() - t < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_compare_and_export_on_a_damaged_store_name_the_file(tmp_path, capsys):
    garbage = tmp_path / "mlflow.db"
    garbage.write_bytes(os.urandom(4096))
    cut = tmp_path / "cut.db"
    cut.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))  # the header, then noise
    for db, why in ((garbage, "is not an SQLite database"), (cut, "cannot be read")):
        uri = f"sqlite:///{db}"
        before = db.read_bytes()
        refused(capsys, ["compare", "exp", "--tracking-uri", uri], str(db), why)
        refused(capsys, ["export", "3f2a9c0b1d", "--tracking-uri", uri], str(db), why)
        assert db.read_bytes() == before


# --- a full disk during a checkpoint save ------------------------------------------------------
def test_a_full_disk_during_a_checkpoint_save_fails_the_run_and_keeps_the_last_checkpoint(
        tiny, capsys, monkeypatch, ltscale_log):
    stage = tiny["out"] / "pretrain"

    def open_on_a_filling_disk(path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        # the first checkpoint fits; the disk fills part way through every later one
        return FailingFile(fh, 4096) if any(stage.glob("checkpoint-*.pt")) else fh

    monkeypatch.setattr(checkpoint, "open", open_on_a_filling_disk, raising=False)
    capsys.readouterr()
    assert cli(["pretrain", str(tiny["recipe"]), "pretrain.epochs=3"]) == 2
    err = capsys.readouterr().err
    (first,) = sorted(stage.glob("checkpoint-*.pt"))
    lines = [ln for ln in err.splitlines() if ln.startswith("ltscale: error:")]
    assert "Traceback" not in err and "unexpected pos" not in err, err
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert "No space left on device" in lines[0] and str(first) in lines[0], lines[0]
    assert f"{stage}/checkpoint-" in lines[0].split("could not be written")[0]
    assert sorted(p.name for p in stage.iterdir()) == [first.name]  # no partial file left
    assert checkpoint.load_checkpoint(first)["step"] > 0
    (run,) = _runs(tiny["uri"])
    assert run.info.status == "FAILED"
    assert "No space left on device" in run.data.tags["ltscale.error"]
    monkeypatch.undo()  # space freed: the same command resumes from that checkpoint
    assert cli(["pretrain", str(tiny["recipe"]), "pretrain.epochs=3"]) == 0
    assert any(f"resuming from {first.name}" in line for line in ltscale_log), ltscale_log


# --- refused before any work -------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_any_work(tiny, capsys):
    for command in ("pretrain", "run"):
        refused(capsys, [command, tiny["recipe"], "device=cuda", "--no-track"], "device: cuda",
                "device=cpu")
    assert not tiny["out"].exists()


@pytest.mark.parametrize("override, needles", [
    ("data.channels=3", ["data.mean: 1 value(s) but data.channels is 3",
                         "data.std: 1 value(s) but data.channels is 3"]),
    ("data.std=[0.25,0.25]", ["data.std: 2 value(s) but data.channels is 1"]),
    ("data.std=[0.0]", ["data.std: a standard deviation must be above 0"]),
])
def test_mean_and_std_that_do_not_fit_the_channels_are_refused(tiny, capsys, override, needles):
    refused(capsys, ["pretrain", tiny["recipe"], override, "--no-track"], *needles,
            one_line=False)
    assert not tiny["out"].exists()


def _head(tmp: Path, in_chans: int, classes: int) -> Path:
    """A head file for ``classes`` classes on a fresh ``in_chans``-channel encoder file."""
    from ltscale.core.hashing import file_sha256
    from ltscale.models import create_backbone
    from ltscale.models.classifier import Head, head_spec
    from ltscale.models.files import HEAD_FORMAT

    enc = create_backbone("resnet_tiny", in_chans=in_chans, cifar_stem=True)
    encoder = tmp / f"encoder-{in_chans}.pt"
    torch.save({"backbone": "resnet_tiny", "cifar_stem": True, "in_chans": in_chans,
                "feat_dim": enc.feat_dim, "state_dict": enc.state_dict()}, encoder)
    head = Head(head_spec(enc.feat_dim, classes, standardize=False))
    path = tmp / f"head-{in_chans}ch-{classes}cls.pt"
    torch.save({"format": HEAD_FORMAT, "spec": head.spec, "state_dict": head.state_dict(),
                "num_classes": classes, "mode": "linear", "classifier_stage": "none",
                "encoder": str(encoder), "encoder_sha256": file_sha256(encoder)}, path)
    return path


def test_eval_of_a_head_trained_on_another_dataset_is_refused_naming_both(tiny, capsys):
    rgb = _head(tiny["tmp"], in_chans=3, classes=3)
    refused(capsys, ["eval", tiny["recipe"], "--from", rgb, "--no-track"], str(rgb),
            "3-channel images", f"{tiny['shards']} has data.channels 1")
    five = _head(tiny["tmp"], in_chans=1, classes=5)
    refused(capsys, ["eval", tiny["recipe"], "--from", five, "--no-track"], str(five),
            "5 classes", f"{tiny['shards']} has 3")
    assert not tiny["out"].exists()  # refused before any work


# --- a signal to the whole process group; kill -9 ----------------------------------------------
def _start(recipe: Path, root: Path, tag: str) -> tuple[subprocess.Popen, Path]:
    """``ltscale pretrain RECIPE`` in a session of its own (its pid is its process group's id),
    stderr to ``root/<tag>.err``; SIGINT as a terminal would deliver it (not inherited ignored)."""
    err = root / f"{tag}.err"
    with open(err, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ltscale", "pretrain", str(recipe)], cwd=root,
            stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            env=os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    return proc, err


def _wait_for(proc: subprocess.Popen, err: Path, what: str, done, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {what} (rc {proc.poll()}):\n{err.read_text()[-3000:]}")
        time.sleep(0.05)


def _signal_group(proc: subprocess.Popen, err: Path, sig: int, rc: int, line: str) -> str:
    """``sig`` to the whole group; the job ends with ``rc``, ``line`` its last line, no
    traceback, and no process of the group is left."""
    os.killpg(proc.pid, sig)
    try:
        assert proc.wait(60) == rc, err.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = err.read_text()
    assert "Traceback" not in text and "killed by signal" not in text, text[-3000:]
    assert text.rstrip().endswith(line), text[-1000:]
    deadline = time.monotonic() + 15
    while _group(proc.pid):  # the loader worker ends with its main process
        assert time.monotonic() < deadline, f"processes of the job outlived it: {_group(proc.pid)}"
        time.sleep(0.1)
    return text


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def test_a_signal_to_the_process_group_ends_like_one_to_the_main_process(tiny):
    raw = tiny["raw"]
    raw["pretrain"].update(workers=1, epochs=5000, checkpoint_every=1)
    recipe = tiny["tmp"] / "long.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    stage = tiny["out"] / "pretrain"

    # SIGTERM to the group (scancel, timeout): exit 143, one line, the run KILLED
    proc, err = _start(recipe, tiny["tmp"], "term")
    _wait_for(proc, err, "checkpoint", lambda: any(stage.glob("checkpoint-*.pt")))
    _signal_group(proc, err, signal.SIGTERM, 143, "ltscale: terminated (SIGTERM)")
    assert {r.info.status for r in _runs(tiny["uri"])} == {"KILLED"}

    # it resumes; kill -9 of the group leaves its run RUNNING ...
    proc, err = _start(recipe, tiny["tmp"], "kill9")
    _wait_for(proc, err, "resume", lambda: "pretrain: resuming from" in err.read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)
    (left,) = [r for r in _runs(tiny["uri"]) if r.info.status == "RUNNING"]

    # ... until the folder is used again, which marks it KILLED; Ctrl-C to the group: exit 130
    proc, err = _start(recipe, tiny["tmp"], "int")
    _wait_for(proc, err, "resume", lambda: "pretrain: resuming from" in err.read_text())
    text = _signal_group(proc, err, signal.SIGINT, 130, "ltscale: interrupted")
    assert f"MLflow run {left.info.run_id}: left RUNNING" in text
    runs = _runs(tiny["uri"])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"KILLED"}
    marked = mlflow.MlflowClient(tiny["uri"]).get_run(left.info.run_id)
    assert "ended without closing this run" in marked.data.tags["ltscale.error"]


def test_a_signal_that_arrives_while_the_process_forks_is_not_lost():
    """Raised in an at-fork hook of the parent (logging has one, registered before ltscale's),
    the exception would be swallowed ("Exception ignored in …"): the signal is delivered again
    once the fork is done."""
    code = (
        "import os, signal, time\n"
        "os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGTERM))\n"
        "from ltscale import cli\n"
        "cli._stop_signals_raise()\n"
        "try:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    time.sleep(10)\n"
        "    print('lost')\n"
        "except cli.Terminated:\n"
        "    print('terminated')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == "terminated", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


def test_a_forked_child_before_its_own_handlers_ignores_sigint_and_ends_quietly_on_sigterm():
    """A loader worker hit by a group signal between its fork and its ``worker_init_fn`` (CI saw
    it: a traceback from multiprocessing's start-up, exit 1, and "DataLoader worker exited
    unexpectedly" in the main process) must neither raise nor exit non-zero."""
    code = (
        "import os, signal, time\n"
        "from ltscale import cli\n"
        "cli._stop_signals_raise()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.2)\n"
        "    print('child survived SIGINT', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(10)\n"
        "    os._exit(3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print('child status', os.waitstatus_to_exitcode(status))\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(10)\n"
        "except KeyboardInterrupt:\n"
        "    print('parent interrupted')\n")
    # SIGINT as a terminal delivers it: a test run started in the background inherits it
    # ignored, and ltscale then leaves it ignored (nohup's intent), as Python does
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=os.environ | {"PYTHONPATH": str(REPO)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.split("\n")[:3] == ["child survived SIGINT", "child status 0",
                                           "parent interrupted"], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


# --- the MLflow UI -----------------------------------------------------------------------------
def test_runs_table_first_and_the_manifest_as_each_stages_dataset(tiny):
    from ltscale.config.loading import load_recipe
    from ltscale.stages.context import make_context
    from ltscale.track import MlflowTracker

    assert cli(["pretrain", str(tiny["recipe"])]) == 0  # a stage command
    client = mlflow.MlflowClient(tiny["uri"])
    exp = client.get_experiment_by_name("issue29")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    manifest = tiny["out"] / "train.manifest.npz"
    from ltscale.data.manifest import Manifest

    digest = Manifest.load(manifest).hash
    (run,) = _runs(tiny["uri"])
    (ds,) = [i.dataset for i in run.inputs.dataset_inputs]
    assert (ds.digest, ds.name) == (digest, "shards exp:4 sym:0.4")
    assert str(tiny["shards"].resolve()) in ds.source

    # a nested stage run that gets the context's tags when it starts (the pipeline's stages)
    tracker = MlflowTracker(tiny["uri"], "issue29")
    ctx = make_context(load_recipe(tiny["recipe"]), tracker, progress=False)
    with tracker.run("tiny"), tracker.run("finetune", nested=True, tags=ctx.tags("finetune")):
        nested = tracker.run_id
    (ds,) = [i.dataset for i in client.get_run(nested).inputs.dataset_inputs]
    assert ds.digest == digest
    NullTracker().log_dataset("name", digest, str(tiny["shards"]))  # accepted, nothing logged
    NullTracker().use_folder(tiny["out"])
