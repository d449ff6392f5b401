"""DeepSpeedBackend: two processes on DeepSpeed's CPU accelerator with gloo, driven by ``fit``.

Two launches (``torch.distributed.run --nproc-per-node 2``) share the work: the first trains the
toy regression under ZeRO-2 and ZeRO-0 (fp32, cosine schedule with warm-up, accumulation 2) and
ZeRO-2 in bf16, writing DeepSpeed checkpoints; the second resumes the ZeRO-2 and bf16 runs.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is not installed "
                                "(pip install 'ltscale[deepspeed]')")

from ltscale.core.errors import CheckpointError  # noqa: E402
from ltscale.data.sampling import EpochSampler  # noqa: E402
from ltscale.engine.checkpoint import (
    checkpoint_files,  # noqa: E402
    save_checkpoint,  # noqa: E402
)
from ltscale.engine.deepspeed_checkpoint import data_dir, peek_checkpoint  # noqa: E402
from ltscale.engine.optim import lr_factor  # noqa: E402

N, BATCH, ACC, LR = 128, 8, 2, 0.2
STEPS_PER_EPOCH = N // (2 * BATCH * ACC)  # 2 ranks

WORKER = textwrap.dedent('''
    import json, logging, sys
    import torch
    from torch import nn
    from ltscale.data.sampling import EpochSampler
    from ltscale.engine.deepspeed_backend import DeepSpeedBackend
    from ltscale.engine.loop import LoopConfig, fit
    from ltscale.track import NullTracker

    class Keep(logging.Handler):  # ltscale's log lines of one run
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    class Regress(nn.Module):
        views = 1

        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)
            self.first = None  # parameters as the first forward sees them (after any resume)

        def forward(self, batch):
            if self.first is None:
                self.first = {k: v.detach().float().clone() for k, v in self.state_dict().items()}
            x, y = batch[0], batch[1]
            return {"loss": ((self.lin(x).squeeze(1) - y) ** 2).mean()}

    backends = []
    for run in json.load(open(sys.argv[1])):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(run["n"], 4, generator=g)
        y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        backend = DeepSpeedBackend("cpu", run["precision"], zero_stage=run["zero"])
        backends.append(backend)
        ds = torch.utils.data.TensorDataset(x, y, torch.arange(run["n"]))
        sampler = EpochSampler(run["n"], batch_size=run["batch"], seed=0, rank=backend.rank,
                               world_size=backend.world_size)
        loader = torch.utils.data.DataLoader(ds, batch_size=run["batch"], sampler=sampler)
        model = Regress()
        opt = torch.optim.SGD(model.parameters(), lr=run["lr"])
        for g_ in opt.param_groups:
            g_["base_lr"] = run["lr"]
        keep = Keep()
        logging.getLogger('ltscale').addHandler(keep)
        cfg = LoopConfig(epochs=run["epochs"], progress=False, schedule="cosine",
                         warmup_epochs=1, accumulate=run["accumulate"])
        state = fit(model, loader, sampler, opt, cfg, backend, NullTracker(),
                    checkpoint=run["ck"], fingerprint="f")
        logging.getLogger("ltscale").removeHandler(keep)
        if backend.is_main:
            torch.save({"params": {k: v.float() for k, v in model.state_dict().items()},
                        "dtype": str(model.lin.weight.dtype), "first": model.first,
                        "step": state.step, "history": state.history, "logs": keep.lines,
                        "world_size": backend.world_size}, run["out"])
    for b in reversed(backends):  # the first one owns the process group
        b.close()
''')


def _launch(tmp_path, name, runs, timeout=240):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps(runs))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(port), str(worker), str(spec)],
        env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    return [torch.load(r["out"], weights_only=False) for r in runs]


def _run(tmp_path, name, zero, epochs, precision="fp32", accumulate=ACC):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    return {"zero": zero, "precision": precision, "epochs": epochs, "accumulate": accumulate,
            "n": N, "batch": BATCH, "lr": LR, "ck": str(d / "ck.pt"),
            "out": str(d / f"out-{epochs}.pt")}


def _reference(epochs):
    """Plain torch: SGD on the mean of both ranks' accumulated micro-batch losses."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    total, step = epochs * STEPS_PER_EPOCH, 0
    for epoch in range(epochs):
        order = []
        for r in range(2):
            s = EpochSampler(N, batch_size=BATCH, seed=0, rank=r, world_size=2)
            s.set_epoch(epoch)
            order.append(list(iter(s)))
        for k in range(STEPS_PER_EPOCH):
            lin.zero_grad()
            for r in range(2):
                for m in range(ACC):
                    idx = order[r][(k * ACC + m) * BATCH:(k * ACC + m + 1) * BATCH]
                    loss = ((lin(x[idx]).squeeze(1) - y[idx]) ** 2).mean() / ACC / 2
                    loss.backward()
            lr = LR * lr_factor(step, total, STEPS_PER_EPOCH, "cosine")
            with torch.no_grad():
                for p in lin.parameters():
                    p -= lr * p.grad
            step += 1
    return {f"lin.{k}": v.detach() for k, v in lin.state_dict().items()}


@pytest.fixture(scope="module")
def first_launch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    runs = [_run(tmp, "z2", 2, 3), _run(tmp, "z0", 0, 3), _run(tmp, "bf16", 2, 3, "bf16", 1)]
    return tmp, runs, _launch(tmp, "first", runs)


def test_zero2_trains_and_writes_deepspeed_checkpoints(first_launch):
    tmp, runs, (z2, _, _) = first_launch
    losses = [h["epoch/loss"] for h in z2["history"]]
    assert z2["world_size"] == 2 and z2["step"] == 3 * STEPS_PER_EPOCH
    assert losses[-1] < 0.5 * losses[0], losses
    files = checkpoint_files(tmp / "z2" / "ck.pt")  # keep=2: the newest two, step-named
    assert [f.name for f in files] == [f"ck-{3 * STEPS_PER_EPOCH:09d}.pt",
                                       f"ck-{2 * STEPS_PER_EPOCH:09d}.pt"]
    assert all(f.is_file() and data_dir(f).is_dir() for f in files)
    # the retired checkpoint's data directory is gone too, and no temporary directory is left
    assert sorted(p.name for p in (tmp / "z2").iterdir() if p.is_dir()) == sorted(
        data_dir(f).name for f in files)
    # every rank wrote its ZeRO partition of the optimizer state
    assert len(list(data_dir(files[0]).glob("*optim_states.pt"))) == 2
    meta = peek_checkpoint(files[0])
    assert (meta["step"], meta["epoch"], meta["fingerprint"]) == (3 * STEPS_PER_EPOCH, 3, "f")


def test_zero0_and_zero2_match_each_other_and_plain_sgd(first_launch):
    """fp32; tolerance 1e-5 (abs and rel): only the order of the gradient reductions differs.
    The plain-torch reference also pins the scaling (one division by the accumulation, a mean
    over ranks) and that the loop's cosine/warm-up learning rates reach the stepped optimizer."""
    _, _, (z2, z0, _) = first_launch
    ref = _reference(3)
    for k in ref:
        torch.testing.assert_close(z2["params"][k], z0["params"][k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z2["params"][k], ref[k], atol=1e-5, rtol=1e-5)


def test_bf16_runs_the_module_in_bf16_and_learns(first_launch):
    if not deepspeed.accelerator.get_accelerator().is_bf16_supported():
        pytest.skip("DeepSpeed's CPU accelerator reports no bf16 support on this machine")
    _, _, (_, _, bf) = first_launch
    assert bf["dtype"] == "torch.bfloat16"
    losses = [h["epoch/loss"] for h in bf["history"]]
    assert losses[-1] < 0.5 * losses[0], losses


def test_a_second_launch_resumes_from_the_deepspeed_checkpoint(first_launch):
    tmp, runs, (z2, _, bf) = first_launch
    last = 3 * STEPS_PER_EPOCH
    # a newer checkpoint cut short by a kill, and a temporary directory of a killed save
    (tmp / "z2" / "ck-000000099.pt").write_bytes(b"\x80\x02garbage")
    (tmp / "z2" / ".ck-000000098.ds.partial").mkdir()
    again = [_run(tmp, "z2", 2, 5), _run(tmp, "bf16", 2, 4, "bf16", 1)]
    z2b, bfb = _launch(tmp, "second", again)
    assert any("skipping unreadable ck-000000099.pt" in line for line in z2b["logs"])
    assert any(f"resuming from ck-{last:09d}.pt (epoch 3, step {last})" in line
               for line in z2b["logs"])
    # parameters as saved, before any further training; the step count continues
    for k, v in z2["params"].items():
        assert torch.equal(z2b["first"][k], v)
    assert z2b["step"] == 5 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in z2b["history"]] == [1, 2, 3, 4, 5]
    assert z2b["history"][:3] == z2["history"]
    assert not (tmp / "z2" / ".ck-000000098.ds.partial").exists()
    for k, v in bf["params"].items():
        assert torch.equal(bfb["first"][k], v)
    assert bfb["step"] == 4 * 2 * STEPS_PER_EPOCH  # accumulation 1: twice the steps per epoch


def test_peek_rejects_incomplete_and_foreign_checkpoints(tmp_path):
    assert peek_checkpoint(tmp_path / "ck-000000001.pt") is None
    cut = tmp_path / "ck-000000002.pt"
    cut.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        peek_checkpoint(cut)
    foreign = tmp_path / "ck-000000003.pt"
    save_checkpoint(foreign, {"step": 3, "fingerprint": "f", "model": {}})
    with pytest.raises(CheckpointError, match="another backend"):
        peek_checkpoint(foreign)
    orphan = tmp_path / "ck-000000004.pt"
    save_checkpoint(orphan, {"step": 4, "deepspeed": {"dir": "ck-000000004.ds"}})
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        peek_checkpoint(orphan)
    (tmp_path / "ck-000000004.ds").mkdir()  # a directory without DeepSpeed's model states
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        peek_checkpoint(orphan)


def test_generated_config():
    from types import SimpleNamespace

    from ltscale.engine.deepspeed_backend import DeepSpeedBackend

    def cfg(precision="fp32", clip=0.0, extra=None):
        fake = SimpleNamespace(zero_stage=1, gradient_clipping=clip, precision=precision,
                               initial_scale_power=12, extra_config=extra or {})
        return DeepSpeedBackend.make_config(fake, 16, 4)

    c = cfg()
    assert (c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (16, 4)
    assert c["zero_optimization"] == {"stage": 1} and "bf16" not in c and "fp16" not in c
    assert c["gradient_clipping"] == 0.0  # explicit: DeepSpeed 0.19 would default to 1.0
    assert cfg("bf16", clip=2.0)["bf16"] == {"enabled": True}
    assert cfg("bf16", clip=2.0)["gradient_clipping"] == 2.0
    fp16 = cfg("fp16")["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0 and fp16["initial_scale_power"] == 12
    merged = cfg(extra={"zero_optimization": {"overlap_comm": True}, "steps_per_print": 5})
    assert merged["zero_optimization"] == {"stage": 1, "overlap_comm": True}
    assert merged["steps_per_print"] == 5
