"""Every registered pretraining method against the same contract, plus the EMA, queue and
global-batch specifics of MoCo, BYOL and Barlow Twins."""

import copy
import inspect
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ltscale.methods import create_method, method_class, method_names
from ltscale.methods.ema import cosine_momentum
from ltscale.models import create_backbone

B, SIZE = 8, 16
# small heads so that every method runs in a fraction of a second on a CPU
SMALL = {
    "simsiam": dict(proj_dim=32, pred_dim=16),
    "simclr": dict(proj_dim=32, out_dim=16),
    "moco": dict(proj_dim=32, out_dim=16, queue_size=64, momentum=0.99),
    "byol": dict(proj_dim=32, out_dim=16, pred_dim=32),
    "barlow_twins": dict(proj_dim=32, out_dim=32),
    "rotation": dict(),
    "supervised": dict(num_classes=4, class_counts=[4, 2, 1, 1]),
    "sdclr": dict(proj_dim=32, out_dim=16, prune_ratio=0.5),
    "fassl_proto": dict(proj_dim=32, out_dim=16, prototypes=8),
    "fassl": dict(proj_dim=32, out_dim=16, pred_dim=32, prototypes=8),
    "supcon": dict(proj_dim=32, out_dim=16),
    "kcl": dict(proj_dim=32, out_dim=16, k=2),
    "sbcl": dict(proj_dim=32, out_dim=16, labels=[i % 4 for i in range(8)], num_classes=4),
}
# label-aware pretraining methods (they train on the labeled role)
LABEL_AWARE = {"supcon", "kcl", "sbcl"}
# the training set facts of a method's ``needs`` for the config test below: batch_for's labels
NEEDS = {"labels": [i % 4 for i in range(8)], "num_classes": 4, "num_samples": 8,
         "class_counts": [2, 2, 2, 2]}


def build(name, seed=0, **extra):
    torch.manual_seed(seed)
    return create_method(name, create_backbone("resnet_tiny", in_chans=3),
                         **(SMALL[name] | extra))


def batch_for(method, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = method.views
    shape = (B, 3, SIZE, SIZE) if v == 1 else (B, v, 3, SIZE, SIZE)
    x = torch.randn(shape, generator=g)
    if v == 4:  # the rotation preset's layout: view k is view 0 rotated by k·90°
        x = torch.stack([torch.rot90(x[:, 0], k, dims=(2, 3)) for k in range(4)], dim=1)
    y = torch.arange(B) % 4
    if "labels" in getattr(method, "needs", ()):  # looks samples up by position
        return x, y, torch.arange(B)
    return x, y


def measure(method, batch, seed=123):
    """Train-mode loss on ``batch`` without leaving a trace (queue, BN statistics restored)."""
    state = copy.deepcopy(method.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():
        loss = method(batch)["loss"].item()
    method.load_state_dict(state)
    return loss


def optimizer_for(method, lr=1e-3):
    groups = method.param_groups() if hasattr(method, "param_groups") else [
        {"params": list(method.parameters())}]
    return torch.optim.Adam([{"params": g["params"]} for g in groups], lr=lr)


def test_every_registered_method_is_covered():
    assert set(method_names()) <= set(SMALL), "add the new method to SMALL"


def test_every_method_file_registers_itself_without_a_list():
    """Adding a method is one file: importing ``ltscale.methods`` finds every module in the
    package, so each name a module registers is in the registry."""
    import ast

    import ltscale.methods

    declared = set()
    for path in Path(ltscale.methods.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_method"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                declared.add(node.args[0].value)
    assert declared and declared == set(method_names())


@pytest.mark.parametrize("name", method_names())
def test_method_contract(name):
    method = build(name)
    method.train()
    batch = batch_for(method)
    out = method(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    if not method.uses_labels:
        assert "z_std" in out and 0 <= float(out["z_std"]) <= 1
    initial = measure(method, batch)
    opt = optimizer_for(method)
    steps = 15
    for step in range(steps):
        loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if hasattr(method, "after_step"):
            method.after_step(step, steps)
    final = measure(method, batch)
    assert final < initial, f"{name}: loss {initial:.4f} → {final:.4f}"

    # a state_dict round trip into a fresh instance gives the same losses
    fresh = build(name, seed=99)
    fresh.load_state_dict(method.state_dict())
    method.eval(), fresh.eval()
    with torch.no_grad():
        assert fresh(batch)["loss"].item() == pytest.approx(method(batch)["loss"].item(), rel=1e-6)
    fresh.train(), method.train()
    assert measure(fresh, batch) == pytest.approx(measure(method, batch), rel=1e-6)

    # methods reach other ranks only through ltscale.engine.dist
    assert "torch.distributed" not in Path(inspect.getsourcefile(type(method))).read_text()


def test_shared_method_modules_do_not_import_torch_distributed():
    import ltscale.losses.ssl
    import ltscale.methods.ema

    for mod in (ltscale.losses.ssl, ltscale.methods.ema):
        assert "torch.distributed" not in Path(inspect.getsourcefile(mod)).read_text()


@pytest.mark.parametrize("name, target_attr", [("byol", "target"), ("moco", "key_net")])
def test_target_network_moves_only_by_ema(name, target_attr):
    method = build(name)
    target = getattr(method, target_attr)
    target_params = list(target.parameters())
    assert target_params and all(not p.requires_grad for p in target_params)
    group_ids = {id(p) for g in method.param_groups() for p in g["params"]}
    assert not group_ids & {id(p) for p in target_params}
    # the online parameters are all trained
    online = [p for m in (method.encoder, method.projector) for p in m.parameters()]
    assert {id(p) for p in online} <= group_ids

    opt = optimizer_for(method, lr=1e-2)
    batch = batch_for(method)
    for step in range(2):
        before = [p.detach().clone() for p in target_params]
        loss = method(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for p, b in zip(target_params, before):  # the optimizer leaves the target alone
            assert torch.equal(p, b) and p.grad is None
        assert all(id(p) not in {id(q) for q in opt.state} for p in target_params)
        method.after_step(step, 10)
        m = cosine_momentum(method.tau_base, step, 10) if name == "byol" else method.momentum
        for p, b, o in zip(target_params, before, online):
            torch.testing.assert_close(p, m * b + (1 - m) * o.detach())
    assert not torch.equal(target_params[0], before[0])


def test_byol_momentum_follows_the_cosine_schedule():
    assert cosine_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 100, 100) == pytest.approx(1.0)
    k, K = 30, 100
    assert cosine_momentum(0.996, k, K) == pytest.approx(
        1 - 0.004 * (math.cos(math.pi * k / K) + 1) / 2)


@pytest.mark.parametrize("symmetric", [False, True])
def test_moco_queue_holds_the_last_keys(symmetric):
    method = build("moco", symmetric=symmetric)
    method.train()
    size = method.queue.shape[0]
    per_step = B * (2 if symmetric else 1)
    for i in range(3):
        batch = batch_for(method, seed=10 + i)
        ptr = int(method.queue_ptr)
        method(batch)
        assert int(method.queue_ptr) == (ptr + per_step) % size
        with torch.no_grad():  # train-mode BN: the batch statistics do not depend on the shuffle
            x = batch[0]
            if symmetric:
                k = F.normalize(method.key_net(x.flatten(0, 1)), dim=1).view(B, 2, -1)
                keys = torch.cat([k[:, 0], k[:, 1]])
            else:
                keys = F.normalize(method.key_net(x[:, 1]), dim=1)
        idx = (ptr + torch.arange(per_step)) % size
        torch.testing.assert_close(method.queue[idx], keys, rtol=1e-5, atol=1e-5)
    # eval-mode forwards leave the queue alone
    method.eval()
    ptr, queue = int(method.queue_ptr), method.queue.clone()
    method(batch_for(method))
    assert int(method.queue_ptr) == ptr and torch.equal(method.queue, queue)


def test_moco_queue_wraps_around():
    method = build("moco", queue_size=12)
    method.train()
    method(batch_for(method))  # 8 keys → pointer 8
    method(batch_for(method, seed=5))  # 8 more: 4 at the end, 4 at the start
    assert int(method.queue_ptr) == 4


def test_barlow_method_loss_is_the_single_process_loss():
    from ltscale.losses.ssl import barlow_twins_single

    method = build("barlow_twins")
    method.train()
    batch = batch_for(method)
    torch.manual_seed(0)
    out = method(batch)["loss"]
    with torch.no_grad():
        z = method.projector(method.encoder(batch[0].flatten(0, 1))).view(B, 2, -1)
    assert out.item() == pytest.approx(barlow_twins_single(z[:, 0], z[:, 1], 0.005).item(),
                                       rel=1e-5)


def test_rotation_targets_follow_the_view_order():
    method = build("rotation")
    method.eval()
    x, y = batch_for(method)
    with torch.no_grad():
        h = method.encoder(x.flatten(0, 1))
        logits = method.head(h)
    expected = F.cross_entropy(logits, torch.arange(4).repeat(B))
    with torch.no_grad():
        assert method((x, y))["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


# --- two real ranks (gloo on CPU): the gathered methods equal one process on the whole batch ----

class _Rows(torch.nn.Module):
    """An 'encoder' that passes its input rows through, so the embeddings are leaves."""

    def __init__(self, dim):
        super().__init__()
        self.feat_dim = dim

    def forward(self, x):
        return x


def _embedding_method(name, dim):
    opts = dict(proj_dim=dim, out_dim=dim)
    method = create_method(name, _Rows(dim), **opts)
    method.projector = torch.nn.Identity()
    return method


def _rank_main(rank, world, init, out_dir, z):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        n = z.shape[0] // world
        results = {}
        for name in ("barlow_twins", "simclr"):
            method = _embedding_method(name, z.shape[-1])
            local = z[rank * n:(rank + 1) * n].clone().requires_grad_(True)
            loss = method((local, torch.zeros(n)))["loss"]
            loss.backward()
            results[name] = (loss.item(), local.grad / world)  # what data parallelism averages
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_barlow_and_simclr_on_two_ranks_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(7)
    world, n, d = 2, 4, 6
    z = torch.randn(world * n, 2, d, dtype=torch.float64) * 2 + 1
    mp.spawn(_rank_main, args=(world, f"file://{tmp_path / 'init'}", str(tmp_path), z),
             nprocs=world, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for name in ("barlow_twins", "simclr"):
        full = z.clone().requires_grad_(True)
        loss = _embedding_method(name, d)((full, torch.zeros(world * n)))["loss"]
        loss.backward()
        losses = [r[name][0] for r in ranks]
        if name == "barlow_twins":  # the same global loss on every rank
            assert losses == pytest.approx([loss.item()] * world, rel=1e-10)
        else:  # each rank's anchors: the ranks' mean is the global loss
            assert sum(losses) / world == pytest.approx(loss.item(), rel=1e-10)
        grads = torch.cat([r[name][1] for r in ranks])
        torch.testing.assert_close(grads, full.grad)


def test_every_method_config_builds_its_method_with_the_defaults():
    from typing import Union, get_args

    from ltscale.config.loading import recipe_from_dict
    from ltscale.config.pretrain import MethodCfg

    union = get_args(MethodCfg)[0]
    cfgs = get_args(union) if getattr(union, "__origin__", None) is Union else (union,)
    names = set()
    for cls in cfgs:
        cfg = cls()
        names.add(cfg.name)
        needs = {n: NEEDS[n] for n in getattr(method_class(cfg.name), "needs", ())}
        method = create_method(cfg.name, create_backbone("resnet_tiny", in_chans=3),
                               **cfg.model_dump(exclude={"name"}), **needs)
        assert recipe_from_dict({"pretrain": {"method": {"name": cfg.name}}}).pretrain.method == cfg
        assert method.uses_labels == (cfg.name in LABEL_AWARE)
    assert names == set(method_names()) - {"supervised"}


def _moco_rank(rank, world, init, out_dir, x):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial weights on every rank, as DDP guarantees
        method = create_method("moco", create_backbone("resnet_tiny", in_chans=3),
                               proj_dim=16, out_dim=8, queue_size=32, shuffle_bn=True)
        method.train()
        n = x.shape[0] // world
        losses = []
        for step in range(2):
            out = method((x[rank * n:(rank + 1) * n], torch.zeros(n)))
            losses.append(out["loss"].item())
            method.after_step(step, 2)
        torch.save({"queue": method.queue.clone(), "ptr": int(method.queue_ptr),
                    "losses": losses}, Path(out_dir) / f"moco{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_moco_with_shuffled_bn_on_two_ranks_keeps_one_queue(tmp_path):
    import torch.multiprocessing as mp

    torch.manual_seed(3)
    world, n = 2, 4
    x = torch.rand(world * n, 2, 3, 16, 16)
    mp.spawn(_moco_rank, args=(world, f"file://{tmp_path / 'init'}", str(tmp_path), x),
             nprocs=world, join=True)
    r0, r1 = (torch.load(tmp_path / f"moco{r}.pt") for r in range(world))
    # keys of the global batch (8 per step) are enqueued on every rank in the same order
    assert r0["ptr"] == r1["ptr"] == 2 * world * n % 32
    assert torch.equal(r0["queue"], r1["queue"])
    assert all(map(math.isfinite, r0["losses"] + r1["losses"]))
