"""The DDP backend on CPU (gloo, 2 processes) and the launcher environment.

Workers run under ``torch.multiprocessing.spawn`` (module-level functions, results through files);
the failure test runs a real ``torchrun`` so its elastic agent is what ends the job.
"""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ltscale.core.dist_env import DistEnv, expand_nodelist
from ltscale.data.sampling import EpochSampler
from ltscale.engine.backend import LocalBackend
from ltscale.engine.checkpoint import checkpoint_files, load_checkpoint
from ltscale.engine.loop import LoopConfig, fit
from ltscale.track import NullTracker

REPO = Path(__file__).resolve().parents[3]
N, PER_RANK, WORLD = 64, 8, 2


# --- the launcher environment ---------------------------------------------------------------------
def test_nodelist_expansion():
    assert expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_nodelist("gpu5") == ["gpu5"]
    assert expand_nodelist("a1,b[9-11],c[2]") == ["a1", "b9", "b10", "b11", "c2"]
    assert expand_nodelist("r[1-2]n[1-2]") == ["r1n1", "r1n2", "r2n1", "r2n2"]
    with pytest.raises(ValueError):
        expand_nodelist("node[01-03")


def test_env_from_torchrun_slurm_or_nothing():
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h0",
                "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert DistEnv.from_env(torchrun) == DistEnv(3, 1, 4, "h0", 1234, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8",
             "SLURM_JOB_NODELIST": "node[07-10]", "SLURM_JOB_ID": "123456"}
    env = DistEnv.from_env(slurm)
    assert (env.rank, env.local_rank, env.world_size, env.master_addr, env.source) == \
        (5, 1, 8, "node07", "slurm")
    assert env.master_port == 20000 + 123456 % 20000 == DistEnv.from_env(slurm).master_port
    assert DistEnv.from_env(slurm | {"MASTER_PORT": "4321", "MASTER_ADDR": "x"}).master_port \
        == 4321
    assert DistEnv.from_env({}) == DistEnv()
    assert not DistEnv.from_env({}).is_distributed
    with pytest.raises(ValueError):
        DistEnv.from_env({"RANK": "2", "WORLD_SIZE": "2"})
    exported = {}
    env.export(exported)
    assert exported == {"MASTER_ADDR": "node07", "MASTER_PORT": str(env.master_port),
                        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}


def test_env_from_monkeypatched_process_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "cn[3-4]")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert DistEnv.from_env() == DistEnv(1, 0, 2, "cn3", 29500, "slurm")


# --- helpers --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, *args):
    port = _free_port()
    mp.spawn(fn, args=(port, *args), nprocs=WORLD, join=True)


def _ddp(rank: int, port: int, **kw):
    from ltscale.engine.ddp import DDPBackend

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    return DDPBackend("cpu", timeout_s=60, **kw)


class Regress(nn.Module):
    """BN-free toy model; remembers the positions it was fed and the state after step 6."""
    views = 1

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)
        self.seen, self.snapshot, self.opt = [], None, None

    def forward(self, batch):
        x, y, pos = batch
        self.seen.append(pos.tolist())
        return {"loss": ((self.lin(x).squeeze(1) - y) ** 2).mean()}

    def after_step(self, step, total):
        if step == 5 and self.opt is not None:  # the 6th step is done
            params = {k: v.detach().clone() for k, v in self.state_dict().items()}
            self.snapshot = {"params": params,
                             "momentum": [s["momentum_buffer"].clone()
                                          for s in self.opt.state.values()]}


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(N, generator=g)
    return torch.utils.data.TensorDataset(x, y, torch.arange(N))


def _train(backend, batch, ck, rank=0, world=1, epochs=2, every=3):
    torch.manual_seed(0)
    sampler = EpochSampler(N, batch_size=batch, seed=0, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(_data(), batch_size=batch, sampler=sampler)
    model = Regress()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for g in opt.param_groups:
        g["base_lr"] = 0.05
    model.opt = opt
    cfg = LoopConfig(epochs=epochs, progress=False, schedule="cosine", checkpoint_every=every,
                     keep=10)
    state = fit(model, loader, sampler, opt, cfg, backend, NullTracker(), checkpoint=ck,
                fingerprint="f")
    return model, opt, state


def _fit_worker(rank, port, out):
    backend = _ddp(rank, port)
    model, opt, state = _train(backend, PER_RANK, Path(out) / "ck" / "ck.pt", rank, WORLD)
    torch.save({"params": model.state_dict(), "seen": model.seen, "snapshot": model.snapshot,
                "step": state.step}, Path(out) / f"rank{rank}.pt")
    backend.close()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _spawn(_fit_worker, str(out))
    return out, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


# --- (a) two ranks of 8 equal one process of 16 ---------------------------------------------------
def test_ddp_fit_matches_a_single_process_run_of_the_global_batch(ddp_run, tmp_path):
    _, ranks = ddp_run
    single, _, state = _train(LocalBackend("cpu"), PER_RANK * WORLD, tmp_path / "ck.pt")
    assert state.step == ranks[0]["step"] == 2 * N // (PER_RANK * WORLD)
    # every step's global batch is the same set of positions: rank r reads slots r, r + W, ...
    for step, batch in enumerate(single.seen):
        got = sorted(ranks[0]["seen"][step] + ranks[1]["seen"][step])
        assert got == sorted(batch)
    # the ranks hold identical parameters; they equal the one-process run up to the summation
    # order of the gradient all-reduce (rank means averaged vs one mean over 16): float32
    # rounding, ~1e-7 per step, well inside 1e-5 after 8 momentum steps
    for k, v in single.state_dict().items():
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k])
        torch.testing.assert_close(ranks[0]["params"][k], v, rtol=0, atol=1e-5)


# --- (c) a checkpoint of world size 2 resumes at world size 1 -------------------------------------
def test_checkpoint_of_two_ranks_resumes_in_one_process(ddp_run, tmp_path):
    out, ranks = ddp_run
    files = {int(p.stem.split("-")[1]): p for p in checkpoint_files(out / "ck" / "ck.pt")}
    assert sorted(files) == [3, 4, 6, 8]  # mid-epoch every 3 steps, and each epoch end
    saved = load_checkpoint(files[6])
    assert saved["world_size"] == 2 and saved["epoch_step"] == 2 and len(saved["rng"]) == 2
    assert saved["sampler"]["global_consumed"] == 2 * PER_RANK * WORLD

    # load into a one-process backend: parameters and momentum equal the ranks' after step 6
    model = Regress()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    LocalBackend("cpu").load(files[6], model, opt)
    snap = ranks[0]["snapshot"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap["params"][k])
        assert torch.equal(v, ranks[1]["snapshot"]["params"][k])
    for s, m in zip(opt.state.values(), snap["momentum"]):
        assert torch.equal(s["momentum_buffer"], m)

    # resume with the loop at world size 1 (batch 16): the sampler continues at the first global
    # slot no rank consumed, so epoch 2 is read exactly once, and the run ends where the
    # uninterrupted one-process run ends
    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    (resume_dir / files[6].name).write_bytes(files[6].read_bytes())
    resumed, _, state = _train(LocalBackend("cpu"), PER_RANK * WORLD, resume_dir / "ck.pt")
    assert state.step == 8 and len(resumed.seen) == 2
    # positions of epoch 2 before the checkpoint (ranks' steps 5-6) + after it (resumed steps 7-8)
    before = sum(ranks[0]["seen"][4:6] + ranks[1]["seen"][4:6], [])
    after = sum(resumed.seen, [])
    assert sorted(before + after) == list(range(N))
    straight, _, _ = _train(LocalBackend("cpu"), PER_RANK * WORLD, tmp_path / "straight" / "ck.pt")
    assert after == sum(straight.seen[6:8], [])
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=1e-5)


# --- (b) collectives for method code; CPU SyncBatchNorm -------------------------------------------
def _collectives_worker(rank, port, out):
    from ltscale.engine import dist as D
    from ltscale.engine.ddp import CpuSyncBatchNorm

    backend = _ddp(rank, port, sync_bn=True)
    res = {"rank": D.rank(), "world": D.world_size()}
    x = torch.full((2, 3), float(rank + 1)).add(torch.arange(6.0).view(2, 3)).requires_grad_()
    y = D.gather_with_grad(x)
    w = torch.arange(12.0).view(4, 3)
    ((rank + 1) * (y * w).sum()).backward()  # rank r's loss weighs the gathered batch by r + 1
    res["gathered"], res["grad"] = y.detach(), x.grad.clone()

    g = torch.Generator().manual_seed(7)
    z = torch.arange(8.0).view(4, 2) + 100 * rank
    shuffled, undo = D.shuffle_batch(z, generator=g)
    res["z"], res["shuffled"], res["unshuffled"] = z, shuffled, D.unshuffle_batch(shuffled, undo)
    res["objects"] = backend.all_gather_object({"r": rank})
    res["broadcast"] = backend.broadcast_object(f"from {rank}")

    torch.manual_seed(0)
    full = torch.randn(8, 3, 5, 5)
    plain = nn.Sequential(nn.BatchNorm2d(3))
    with torch.no_grad():
        plain[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    model, _ = backend.setup(plain, None)  # converted to synchronised BN, wrapped in DDP
    bn = backend.unwrap(model)
    part = full[rank * 4:(rank + 1) * 4].clone().requires_grad_()
    yb = model(part)
    ((yb * torch.linspace(-1, 1, 75).view(1, 3, 5, 5)) ** 2).sum().backward()
    res["bn"] = {"y": yb.detach(), "dx": part.grad, "dw": bn[0].weight.grad,
                 "db": bn[0].bias.grad, "mean": bn[0].running_mean, "var": bn[0].running_var,
                 "state_keys": sorted(bn.state_dict()),
                 "converted": type(bn[0]) is CpuSyncBatchNorm}
    bn.eval()  # evaluation: running statistics, no collective
    res["bn_eval"] = bn(full).detach()
    torch.save(res, Path(out) / f"rank{rank}.pt")
    backend.barrier()
    backend.close()
    # the results are written and the group is closed: skip interpreter teardown, where torch's
    # background threads occasionally abort ("terminate called without an active exception",
    # seen once in CI) after the work is done
    os._exit(0)


def test_collectives_and_sync_batchnorm_across_two_ranks(tmp_path):
    _spawn(_collectives_worker, str(tmp_path))
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]
    xs = [torch.full((2, 3), float(i + 1)) + torch.arange(6.0).view(2, 3) for i in range(WORLD)]
    w = torch.arange(12.0).view(4, 3)
    for i in range(WORLD):
        assert (r[i]["rank"], r[i]["world"]) == (i, WORLD)
        assert torch.equal(r[i]["gathered"], torch.cat(xs))  # rank order
        # d(sum_r (r+1) <gather(x), w>)/dx_i = (1 + 2) * w's rows of rank i
        assert torch.equal(r[i]["grad"], 3 * w[2 * i:2 * i + 2])
        assert torch.equal(r[i]["unshuffled"], r[i]["z"])
        assert r[i]["objects"] == [{"r": 0}, {"r": 1}] and r[i]["broadcast"] == "from 0"
    both = torch.cat([r[0]["shuffled"], r[1]["shuffled"]])
    whole = torch.cat([r[0]["z"], r[1]["z"]])
    assert not torch.equal(both, whole)  # shuffled across ranks, as a permutation of the rows
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, whole.tolist()))

    # sync BN on two halves == plain BN on the whole batch: outputs, gradients, running stats
    torch.manual_seed(0)
    full = torch.randn(8, 3, 5, 5).requires_grad_()
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    y = bn(full)
    ((y * torch.linspace(-1, 1, 75).view(1, 3, 5, 5)) ** 2).sum().backward()
    tol = dict(rtol=1e-4, atol=1e-5)  # sums of squares vs. torch's Welford
    torch.testing.assert_close(torch.cat([r[0]["bn"]["y"], r[1]["bn"]["y"]]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([r[0]["bn"]["dx"], r[1]["bn"]["dx"]]), full.grad, **tol)
    # each rank's loss is half of the whole; DDP averages the ranks' gradients: whole / 2
    bn.eval()
    for i in range(WORLD):
        assert r[i]["bn"]["converted"]
        assert r[i]["bn"]["state_keys"] == sorted(nn.Sequential(bn).state_dict())
        torch.testing.assert_close(r[i]["bn"]["dw"], bn.weight.grad / 2, **tol)
        torch.testing.assert_close(r[i]["bn"]["db"], bn.bias.grad / 2, **tol)
        torch.testing.assert_close(r[i]["bn_eval"], bn(full).detach(), **tol)
        torch.testing.assert_close(r[i]["bn"]["mean"], bn.running_mean, **tol)
        torch.testing.assert_close(r[i]["bn"]["var"], bn.running_var, **tol)


# --- (d) one failing rank ends the job ------------------------------------------------------------
FAILING = """
import os, sys, time
from pathlib import Path
import torch
from ltscale.engine.ddp import DDPBackend

out = Path(sys.argv[1])
backend = DDPBackend("cpu", timeout_s=30)
(out / f"pid{backend.rank}").write_text(str(os.getpid()))
backend.barrier()  # both ranks are up
if backend.rank == 1:
    raise RuntimeError("rank 1 fails on purpose")
backend.barrier()  # rank 0 waits here for a peer that is gone
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failing_rank_ends_the_torchrun_job_nonzero_and_quickly(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text(textwrap.dedent(FAILING))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0, proc.stderr[-2000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert "rank 1 fails on purpose" in proc.stderr
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(2)]
    deadline = time.monotonic() + 5
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, pids)), "a worker outlived the job"


# --- backend selection; a one-process group -------------------------------------------------------
def test_auto_backend_is_local_without_a_launcher(monkeypatch):
    from ltscale.config.loading import recipe_from_dict
    from ltscale.stages.context import create_backend

    for k in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(k, raising=False)
    backend = create_backend(recipe_from_dict({"device": "cpu"}))
    assert type(backend) is LocalBackend and backend.world_size == 1


def test_ddp_backend_in_one_process_trains_like_local(tmp_path):
    from ltscale.engine.ddp import DDPBackend

    backend = DDPBackend("cpu", sync_bn=True, timeout_s=30,
                         env=DistEnv(master_port=_free_port()))
    try:
        assert (backend.rank, backend.world_size, backend.is_main) == (0, 1, True)
        ddp, _, _ = _train(backend, 16, tmp_path / "a" / "ck.pt")
        local, _, _ = _train(LocalBackend("cpu"), 16, tmp_path / "b" / "ck.pt")
        for k, v in local.state_dict().items():
            torch.testing.assert_close(ddp.state_dict()[k], v, rtol=0, atol=1e-6)
    finally:
        backend.close()
    assert not torch.distributed.is_initialized()


def test_replicated_buffers_are_left_out_of_ddp_broadcasts(tmp_path):
    from ltscale.engine.ddp import DDPBackend, replicated_buffer_names
    from ltscale.methods import create_method
    from ltscale.methods.probe import OnlineProbe
    from ltscale.models import create_backbone

    moco = create_method("moco", create_backbone("resnet_tiny", in_chans=3), proj_dim=16,
                         out_dim=8, queue_size=32)
    model = OnlineProbe(moco, 3)
    assert replicated_buffer_names(model) == ["method.queue", "method.queue_ptr"]
    backend = DDPBackend("cpu", timeout_s=30, env=DistEnv(master_port=_free_port()))
    try:
        ddp, _ = backend.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
        synced = {id(b) for b in ddp.modules_buffers}
        assert id(moco.queue) not in synced and id(moco.queue_ptr) not in synced
        bn = next(m for m in moco.encoder.modules() if isinstance(m, nn.BatchNorm2d))
        assert id(bn.running_mean) in synced  # ordinary buffers are still broadcast
    finally:
        backend.close()
    bad = nn.Linear(2, 2)
    bad.replicated_buffers = ("nope",)
    with pytest.raises(AttributeError, match="'nope', which is not one of its buffers"):
        replicated_buffer_names(bad)
