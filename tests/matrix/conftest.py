"""Launches of the matrix worker, one per (backend, precision, mode), shared by its tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ltscale.data.index import ShardIndex
from ltscale.data.manifest import build_manifest
from ltscale.data.manifest_spec import ManifestSpec
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from tests.matrix.cells import method_names, ranks
from tests.reliability.conftest import free_port
from tests.reliability.tinydata import CLASSES, jpeg_bytes

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
TIMEOUT = 600


@pytest.fixture(scope="session")
def matrix_data(tmp_path_factory) -> Path:
    """An ImageFolder of 16-px RGB JPEGs (train: 16 per class, test: 4 per class) as shards, and
    a manifest over the train split."""
    root = tmp_path_factory.mktemp("matrix-data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for label, name in enumerate(CLASSES):
            folder = root / "images" / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{name}_{i:03d}.jpg").write_bytes(jpeg_bytes(rng, label))
    build_shards(open_source("imagefolder", root / "images"), root / "shards",
                 source_kind="imagefolder", source_path=str(root / "images"), progress=False)
    build_manifest(ShardIndex.load(root / "shards"),
                   ManifestSpec(split="train", seed=0)).save(root / "train.manifest.npz")
    return root


class Launch:
    """One run of ``worker.py`` over every method (torchrun when the backend has several ranks)."""

    def __init__(self, data: Path, out: Path, backend: str, precision: str, mode: str,
                 env: dict | None = None):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        script = [str(WORKER), "--backend", backend, "--precision", precision, "--data",
                  str(data), "--out", str(out), "--mode", mode,
                  "--methods", ",".join(method_names())]
        n = ranks(backend)
        if n > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
                   "--max-restarts", "0", "--monitor-interval", "0.5", *script]
        else:
            cmd = [sys.executable, *script]
        self.env = {k: v for k, v in os.environ.items() if k != "MATRIX_KILL"}
        self.env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
                     **(env or {})}
        self.cmd, self.logs = cmd, []

    def run(self) -> int:
        log = self.out / f"launch-{len(self.logs)}.log"
        with open(log, "w") as fh:
            rc = subprocess.run(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                cwd=self.out, timeout=TIMEOUT).returncode
        self.logs.append(log)
        return rc

    def output(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in self.logs)


@pytest.fixture(scope="session")
def launches(matrix_data, tmp_path_factory):
    """``get(backend, precision, mode)``: that launch, run once per session.

    ``checks``: one uninterrupted launch (fixed-batch checks + the real stage).
    ``resume``: the real stage with ``MATRIX_KILL`` set, relaunched after each kill until it
    exits 0 — every method is SIGKILLed once mid-epoch and resumed."""
    done: dict = {}

    def get(backend: str, precision: str, mode: str) -> Launch:
        key = (backend, precision, mode)
        if key not in done:
            out = tmp_path_factory.mktemp(f"{backend}-{precision}-{mode}")
            if mode == "checks":
                launch = Launch(matrix_data, out, backend, precision, "checks")
                launch.rc = launch.run()
            else:
                # the 5th forward of a stage is step 5: after the mid-epoch checkpoint of step 4
                launch = Launch(matrix_data, out, backend, precision, "train",
                                env={"MATRIX_KILL": "5"})
                launch.rc = None
                for _ in range(len(method_names()) + 1):
                    launch.rc = launch.run()
                    if launch.rc == 0:
                        break
            done[key] = launch
        return done[key]

    return get
