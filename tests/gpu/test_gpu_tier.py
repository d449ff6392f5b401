"""The gpu tier (``-m gpu``): what only a CUDA machine can show. Skipped, saying so, without CUDA;
``tools/gpu-check.sh`` runs it first on a GPU machine.

- the matrix checks on CUDA for every backend × precision (fp16 included: the GradScaler on the
  local and DDP backends, DeepSpeed's own loss scaling), with NCCL for DDP (one rank per GPU)
  and DeepSpeed on its CUDA accelerator;
- a SIGKILL mid-epoch and relaunch on CUDA ends ``torch.equal`` to the uninterrupted run (the
  checkpoint's RNG states, CUDA's included, come back as CPU byte tensors);
- channels-last inputs (in the matrix checks) and ``torch.compile`` on CUDA;
- DALI's ``mixed`` (nvJPEG) decoding against its CPU path: the same ids, and pixels within a
  stated tolerance;
- the peak-memory figure is per epoch (reset at each epoch's start).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests.matrix.cells import backend_names, method_names, precisions

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs CUDA: the gpu tier runs on a GPU machine "
                                        "(bash tools/gpu-check.sh)")]


@pytest.fixture(scope="module")
def cuda_env():
    old = os.environ.get("MATRIX_DEVICE")
    os.environ["MATRIX_DEVICE"] = "cuda"  # read by tests.matrix.cells in this process and workers
    yield
    if old is None:
        os.environ.pop("MATRIX_DEVICE", None)
    else:
        os.environ["MATRIX_DEVICE"] = old


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.matrix.harness import make_matrix_data

    return make_matrix_data(tmp_path_factory.mktemp("gpu-matrix-data"))


CELLS = [(b, p) for b in backend_names() for p in precisions()]


@pytest.mark.parametrize("backend,precision", CELLS, ids=[f"{b}-{p}" for b, p in CELLS])
def test_matrix_checks_on_cuda(cuda_env, data, tmp_path, backend, precision):
    from tests.matrix.harness import (
        Launch,
        checks_of,
        ema_problem,
        export_problem,
        fp32_problem,
        layout_problem,
        loss_problem,
    )

    if backend == "deepspeed":
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed on this machine")
    launch = Launch(data, tmp_path, backend, precision, "checks")
    launch.run()
    problems = {}
    for method in method_names():
        checks = checks_of(launch, method)
        found = [p for p in (loss_problem(checks), ema_problem(checks), fp32_problem(checks),
                             layout_problem(checks), export_problem(launch, method)) if p]
        if found:
            problems[method] = found
    assert not problems, problems


def test_sigkill_and_relaunch_on_cuda_is_exact(cuda_env, data, tmp_path):
    from tests.matrix.harness import KILL, Launch, resume_problem

    methods = ["simsiam", "moco", "sdclr"]  # plain, EMA + queue, per-epoch hook
    reference = Launch(data, tmp_path / "ref", "local", "fp32", "train", methods=methods)
    assert reference.run() == 0, reference.output()
    resumed = Launch(data, tmp_path / "resumed", "local", "fp32", "train", env=KILL,
                     methods=methods)
    resumed.run_until_done(len(methods) + 1)
    problems = {m: resume_problem(resumed, reference, m) for m in methods}
    assert not any(problems.values()), problems


def test_compile_on_cuda(cuda_env, data, tmp_path):
    from tests.matrix.harness import Launch, checks_of, loss_problem

    launch = Launch(data, tmp_path, "local", "bf16", "fixed", env={"MATRIX_COMPILE": "1"},
                    methods=["simsiam"])
    launch.run()
    checks = checks_of(launch, "simsiam")
    assert checks["compiled_graphs"] > 0 and loss_problem(checks) is None, checks


def test_peak_memory_is_measured_per_epoch(tmp_path):
    from torch import nn

    from ltscale.data.sampling import EpochSampler
    from ltscale.engine.backend import LocalBackend
    from ltscale.engine.loop import LoopConfig, fit
    from ltscale.track import NullTracker

    class Hungry(nn.Module):
        """Allocates a 1 GiB temporary in every forward of the first epoch only."""

        def __init__(self):
            super().__init__()
            self.lin, self.epoch = nn.Linear(4, 1), 0

        def set_epoch(self, epoch, epochs):
            self.epoch = epoch

        def forward(self, batch):
            if self.epoch == 0:
                big = torch.ones(2**28, device=batch[0].device)  # 1 GiB of fp32
                del big
            return {"loss": (self.lin(batch[0]).squeeze(1) - batch[1]).pow(2).mean()}

    x, y = torch.randn(64, 4), torch.randn(64)
    sampler = EpochSampler(64, batch_size=16, seed=0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y, torch.arange(64)),
                                         batch_size=16, sampler=sampler)
    model = Hungry()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for g in opt.param_groups:
        g["base_lr"] = 0.01
    state = fit(model, loader, sampler, opt, LoopConfig(epochs=2, progress=False),
                LocalBackend("cuda"), NullTracker())
    first, second = (h["epoch/peak_memory_mb"] for h in state.history)
    assert first >= 1024 and second < 100, (first, second)


def test_dali_mixed_decoding_matches_the_cpu_path(tmp_path):
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed on this machine")
    from ltscale.bench.synthetic import write_jpeg_folder
    from ltscale.data.augment import eval_spec
    from ltscale.data.dataset import ManifestDataset
    from ltscale.data.index import ShardIndex
    from ltscale.data.loading import LoaderSettings
    from ltscale.data.loading.dali_loader import DaliLoader
    from ltscale.data.sampling import EpochSampler
    from ltscale.data.shards import build_shards
    from ltscale.data.sources import open_source

    write_jpeg_folder(tmp_path / "tree", 48, 3, size=96)
    build_shards(open_source("imagefolder", tmp_path / "tree"), tmp_path / "ds",
                 source_kind="imagefolder", source_path=str(tmp_path / "tree"), progress=False)
    index = ShardIndex.load(tmp_path / "ds")
    spec = eval_spec(64)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = {}
    for device in ("cpu", "cuda"):
        ds = ManifestDataset.from_split(index, "train", None)
        sampler = EpochSampler(len(ds), batch_size=8, seed=0, tail="keep")
        loader = DaliLoader(ds, sampler, LoaderSettings(backend="dali", workers=2),
                            device=torch.device(device), mean=mean, std=std, eval_spec=spec)
        out[device] = [(x.float().cpu(), pos.cpu()) for x, _, pos in loader]
    assert [p.tolist() for _, p in out["cpu"]] == [p.tolist() for _, p in out["cuda"]]
    level = 1 / 255 / 0.25  # one 8-bit level in normalised units
    for (a, _), (b, _) in zip(out["cpu"], out["cuda"]):
        # nvJPEG and libjpeg-turbo differ in IDCT and chroma upsampling, and the resize
        # kernels by a rounding: within 3 levels on average, image means within one level
        assert (a - b).abs().mean() < 3 * level
        assert np.allclose(a.mean((1, 2, 3)), b.mean((1, 2, 3)), atol=level)
