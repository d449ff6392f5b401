"""Fixtures of the reliability tier: tiny datasets, real multi-process training jobs, kills.

Jobs are ``python -m torch.distributed.run`` (torchrun, c10d rendezvous, no restarts) over
``tests/reliability/train.py`` with 2 ranks on gloo, 2 DataLoader workers each; a test stops a
rank at a chosen point (``RELI_PAUSE``), SIGKILLs it, and relaunches. The uninterrupted
reference runs are built once per session.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import make_jpeg_dataset

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "reliability" / "train.py"
EPOCHS, STEPS_PER_EPOCH = 3, 6   # 48 samples, global batch 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Data:
    shards: Path
    manifest: Path


@pytest.fixture(scope="session")
def clean_data(tmp_path_factory) -> Data:
    """48 JPEGs (16 per class) in 12 shards, with a manifest over all of them."""
    return Data(*make_jpeg_dataset(tmp_path_factory.mktemp("clean"), 16, shard_bytes=12000))


class Job:
    """One training job (torchrun with ``nproc`` ranks, or a plain process when ``nproc`` is 0)
    writing into ``out``."""

    def __init__(self, data: Data, out: Path, nproc: int = 2, tag: str = "run",
                 env: dict | None = None, args: tuple = ()):
        self.out, self.tag = Path(out), tag
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in [self.out / "paused", *self.out.glob("pid-rank*")]:
            stale.unlink(missing_ok=True)
        script = [str(SCRIPT), "--data", str(data.shards), "--manifest", str(data.manifest),
                  "--out", str(self.out), *map(str, args)]
        if nproc:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                   "--max-restarts", "0", "--monitor-interval", "0.5", *script]
        else:
            cmd = [sys.executable, *script]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("RELI_")}
        full_env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "RELI_TAG": tag,
                     **(env or {})}
        self.log = open(self.out / f"{tag}.log", "w")
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=self.out)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.out / f"{self.tag}.log").read_text()

    def wait_for(self, name: str, timeout: float = 90) -> Path:
        path = self.out / name
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the job ended (rc {self.proc.returncode}) before "
                                     f"{name} appeared:\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.terminate()
                raise AssertionError(f"{name} did not appear within {timeout} s:\n"
                                     f"{self.output()[-3000:]}")
            time.sleep(0.05)
        return path

    def pid(self, rank: int) -> int:
        return int(self.wait_for(f"pid-rank{rank}").read_text())

    def kill_rank(self, rank: int) -> None:
        os.kill(self.pid(rank), signal.SIGKILL)

    def wait(self, timeout: float = 120) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.terminate()
            raise AssertionError(f"the job did not end within {timeout} s:\n"
                                 f"{self.output()[-3000:]}") from None
        self.log.close()
        return rc

    def finish(self, timeout: float = 120) -> "Job":
        rc = self.wait(timeout)
        assert rc == 0, self.output()[-4000:]
        return self

    def terminate(self) -> None:
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)

    def steps(self, rank: int = 0) -> list[dict]:
        return read_steps(self.out, self.tag, rank)


def read_steps(out: Path, tag: str = "run", rank: int = 0) -> list[dict]:
    path = Path(out) / f"steps-{tag}-rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    """Running (not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def load_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_state(a: dict, b: dict, exact: bool = True) -> None:
    """Model and optimizer state equal (``torch.equal``; or close when ``exact`` is False)."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        if exact:
            assert torch.equal(a["model"][k], b["model"][k]), k
        else:
            torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5)
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for name, value in sa[k].items():
            if isinstance(value, torch.Tensor):
                if exact:
                    assert torch.equal(value, sb[k][name]), (k, name)
                else:
                    torch.testing.assert_close(value, sb[k][name], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="session")
def reference(clean_data, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run (dropout on) every kill test is compared with."""
    out = tmp_path_factory.mktemp("reference")
    Job(clean_data, out).finish()
    return out


@pytest.fixture(scope="session")
def reference_nodrop(clean_data, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run without dropout (world-size changes keep no RNG stream)."""
    out = tmp_path_factory.mktemp("reference-nodrop")
    Job(clean_data, out, args=("--dropout", "0")).finish()
    return out
