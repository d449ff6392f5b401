"""The matrix worker's data and launches, shared by the CPU matrix and the gpu tier."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from ltscale.data.shards import DEFAULT_SHARD_BYTES
from tests.conftest import make_jpeg_dataset
from tests.matrix.cells import device, method_names, ranks
from tests.reliability.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
TIMEOUT = 600


def make_matrix_data(root: Path) -> Path:
    """``root`` holding an ImageFolder of 16-px RGB JPEGs (train: 16 per class, test: 4 per
    class) as shards, and a manifest over the train split (``make_jpeg_dataset``)."""
    make_jpeg_dataset(root, 16, test_per_class=4, shard_bytes=DEFAULT_SHARD_BYTES)
    return root


class Launch:
    """One run of ``worker.py`` over ``methods`` (default: every method; torchrun when the
    backend has several ranks)."""

    def __init__(self, data: Path, out: Path, backend: str, precision: str, mode: str,
                 env: dict | None = None, methods: list[str] | None = None):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        script = [str(WORKER), "--backend", backend, "--precision", precision, "--data",
                  str(data), "--out", str(out), "--mode", mode,
                  "--methods", ",".join(methods or method_names())]
        n = ranks(backend)
        if n > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                   "--max-restarts", "0", "--monitor-interval", "0.5", *script]
        else:
            cmd = [sys.executable, *script]
        self.env = {k: v for k, v in os.environ.items() if k != "MATRIX_KILL"}
        path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.env |= {"PYTHONPATH": path, "OMP_NUM_THREADS": "1",
                     "DS_ACCELERATOR": "cuda" if device() == "cuda" else "cpu", **(env or {})}
        self.cmd, self.logs, self.rc = cmd, [], None

    def run(self) -> int:
        log = self.out / f"launch-{len(self.logs)}.log"
        with open(log, "w") as fh:
            self.rc = subprocess.run(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                     cwd=self.out, timeout=TIMEOUT).returncode
        self.logs.append(log)
        return self.rc

    def run_until_done(self, tries: int) -> int:
        """Relaunch after each failure (a kill), at most ``tries`` times."""
        for _ in range(tries):
            if self.run() == 0:
                break
        return self.rc

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs)


# the 5th forward of a stage is step 5, right after the mid-epoch checkpoint of step 4
KILL = {"MATRIX_KILL": "5"}


# --- what each cell must show (None: fine; else what is wrong) ----------------------------------
def checks_of(launch: Launch, method: str) -> dict:
    path = launch.out / f"checks-{method}.json"
    if launch.rc != 0 or not path.exists():
        raise AssertionError(f"the {method} checks did not run:\n{launch.output()}")
    return json.loads(path.read_text())


def loss_problem(checks: dict) -> str | None:
    losses = checks["losses"]
    if not all(math.isfinite(v) for v in losses):
        return f"non-finite loss: {losses}"
    if not min(losses[-3:]) < losses[0]:
        return f"the loss did not fall on a fixed batch: {losses}"
    return None


def ema_problem(checks: dict) -> str | None:
    moved = checks["ema_moved"]  # target tensor → [it moved, its online counterpart moved]
    frozen = [name for name, (target, online) in moved.items() if online and not target]
    if frozen:
        return f"{len(frozen)} of {len(moved)} target tensors did not follow: {frozen[:5]}"
    if moved and sum(online for _, online in moved.values()) < 0.9 * len(moved):
        return f"the online network barely trained: {moved}"
    return None


def fp32_problem(checks: dict) -> str | None:
    wrong = {k: v for k, v in checks["kept_dtypes"].items() if v != "torch.float32"}
    return f"declared keep_fp32 but stored as {wrong}" if wrong else None


def layout_problem(checks: dict) -> str | None:
    layouts = checks["layouts"]
    if not layouts or not all(layouts):
        return f"the backbone received images that are not channels-last: {layouts}"
    return None


def export_problem(launch: Launch, method: str) -> str | None:
    export = json.loads((launch.out / method / f"export-{method}.json").read_text())
    if not (export["all_fp32"] and export["equal_master"]):
        return f"encoder.pt is not the fp32 master copy: {export}"
    if not all(isinstance(k, float) for k in export["knn"]):
        return f"the kNN monitor did not score every epoch: {export}"
    return None


def resume_problem(resumed: Launch, reference: Launch, method: str) -> str | None:
    if resumed.rc != 0:
        return f"the relaunches did not finish:\n{resumed.output()}"
    if not (resumed.out / method / f"killed-{method}").exists():
        return f"{method} was never killed:\n{resumed.output()}"
    got = torch.load(resumed.out / method / f"final-{method}.pt", weights_only=True)
    want = torch.load(reference.out / method / f"final-{method}.pt", weights_only=True)
    if got.keys() != want.keys():
        return f"other state keys: {sorted(set(got) ^ set(want))}"
    different = [k for k in want if not torch.equal(got[k], want[k])]
    if different:
        return f"{len(different)} tensors differ after the resume: {different[:5]}"
    return None
