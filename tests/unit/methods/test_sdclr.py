"""SDCLR: magnitude masks (fraction kept, largest weights, recomputed at each epoch start), the
pruned branch really running on masked shared weights with its own BN, the loss, checkpoints and
two DDP ranks."""

import copy
import os
import socket
from pathlib import Path

import pytest
import torch

from ltscale.losses.ssl import nt_xent
from ltscale.methods import create_method
from ltscale.methods.pruning import MagnitudeMasks, magnitude_masks, prunable_weights
from ltscale.models import create_backbone

B, SIZE = 8, 16


def sdclr(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(proj_dim=32, out_dim=16) | kw
    return create_method("sdclr", create_backbone("resnet_tiny", in_chans=3), **opts)


def views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2, 3, SIZE, SIZE, generator=g), torch.zeros(B, dtype=torch.long)


def masked_copy(encoder, masks):
    """A separate plain encoder whose weights are the masked weights (the reference network)."""
    ref = copy.deepcopy(encoder)
    with torch.no_grad():
        for name, mask in masks.items():
            ref.get_parameter(name).mul_(mask)
    return ref


def test_prunable_weights_are_the_conv_and_linear_weights():
    enc = create_backbone("resnet_tiny", in_chans=3)
    names = prunable_weights(enc)
    convs = [n for n, m in enc.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert names == [f"{n}.weight" for n in convs] and len(names) == 9  # stem, 3·2, 2 shortcuts
    head = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    assert prunable_weights(head) == ["0.weight"]


@pytest.mark.parametrize("ratio", [0.9, 0.5, 0.0])
def test_layer_masks_keep_the_stated_fraction_of_each_layer_and_its_largest_weights(ratio):
    enc = create_backbone("resnet_tiny", in_chans=3)
    masks = MagnitudeMasks(enc, ratio, "layer").masks()
    for name, mask in masks.items():
        w = enc.get_parameter(name).detach().abs()
        n = w.numel()
        assert mask.dtype == torch.bool and mask.shape == w.shape
        assert int(mask.sum()) == n - round(ratio * n)
        if 0 < ratio:
            assert w[mask].min() >= w[~mask].max()
    stem = masks["conv1.weight"]  # 8·3·3·3 = 216 weights: 90 % pruned keeps 22
    if ratio == 0.9:
        assert int(stem.sum()) == 22


def test_global_masks_share_one_threshold_across_layers():
    torch.manual_seed(0)
    weights = [torch.randn(10, 10), torch.randn(50) * 5, torch.randn(3, 4) * 0.1]
    masks = magnitude_masks(weights, 0.8, "global")
    total = sum(w.numel() for w in weights)  # 162 → 162 − round(129.6) = 32 kept
    assert sum(int(m.sum()) for m in masks) == 32 == total - round(0.8 * total)
    kept = torch.cat([w.abs()[m] for w, m in zip(weights, masks)])
    dropped = torch.cat([w.abs()[~m] for w, m in zip(weights, masks)])
    assert kept.min() >= dropped.max()
    fractions = [float(m.float().mean()) for m in masks]  # the large-magnitude layer keeps most
    assert fractions[1] > fractions[0] > fractions[2]
    # layer scope, on the same tensors: every layer keeps its own 20 %
    assert [int(m.sum()) for m in magnitude_masks(weights, 0.8, "layer")] == [20, 10, 2]


def test_a_layer_never_loses_all_its_weights_and_bad_settings_are_refused():
    assert [int(m.sum()) for m in magnitude_masks([torch.ones(3)], 0.9)] == [1]
    with pytest.raises(ValueError, match="ratio"):
        magnitude_masks([torch.ones(3)], 1.0)
    with pytest.raises(ValueError, match="scope"):
        magnitude_masks([torch.ones(3)], 0.5, "row")


def test_masks_are_recomputed_from_the_current_weights_at_each_epoch_start():
    method = sdclr()
    before = {k: v.clone() for k, v in method.masks.masks().items()}
    with torch.no_grad():  # the weights change as training would change them
        for name in method.masks.names:
            method.encoder.get_parameter(name).copy_(
                torch.randn_like(method.encoder.get_parameter(name)))
    assert all(torch.equal(v, before[k]) for k, v in method.masks.masks().items())  # not yet
    method.set_epoch(1, 3)
    after = method.masks.masks()
    expected = magnitude_masks([method.encoder.get_parameter(n) for n in method.masks.names], 0.9)
    assert all(torch.equal(after[n], e) for n, e in zip(method.masks.names, expected))
    assert not all(torch.equal(after[k], before[k]) for k in after)


def test_the_training_loop_reprunes_at_each_epoch_start_and_checkpoints_the_masks(tmp_path):
    from ltscale.data.sampling import EpochSampler
    from ltscale.engine.backend import LocalBackend
    from ltscale.engine.checkpoint import latest_checkpoint, load_checkpoint
    from ltscale.engine.loop import LoopConfig, fit
    from ltscale.track import NullTracker

    method = sdclr()
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(32, 2, 3, SIZE, SIZE, generator=g),
                                        torch.zeros(32, dtype=torch.long), torch.arange(32))
    sampler = EpochSampler(32, batch_size=8, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=sampler)
    opt = torch.optim.SGD(method.parameters(), lr=0.5)
    for group in opt.param_groups:
        group["base_lr"] = 0.5
    seen = []  # (epoch, masks right after the hook, masks the weights of that moment give)
    hook = method.set_epoch

    def spy(epoch, epochs):
        hook(epoch, epochs)
        weights = [method.encoder.get_parameter(n) for n in method.masks.names]
        seen.append((epoch, [m.clone() for m in method.masks.masks().values()],
                     magnitude_masks(weights, 0.9)))

    method.set_epoch = spy
    fit(method, loader, sampler, opt, LoopConfig(epochs=2, max_steps_per_epoch=2,
                                                 progress=False, schedule="constant"),
        LocalBackend("cpu"), NullTracker(), checkpoint=tmp_path / "ck.pt")
    assert [e for e, _, _ in seen] == [0, 1]
    for _, masks, expected in seen:
        assert all(torch.equal(m, e) for m, e in zip(masks, expected))
    assert not all(torch.equal(a, b) for a, b in zip(seen[0][1], seen[1][1]))  # weights moved
    # no re-pruning inside an epoch: the final masks are the ones drawn at its start
    assert all(torch.equal(m, e) for m, e in zip(method.masks.masks().values(), seen[1][1]))
    saved = load_checkpoint(latest_checkpoint(tmp_path / "ck.pt"))
    assert torch.equal(saved["model"]["masks.conv1__weight"], seen[1][1][0])


@pytest.mark.parametrize("dual_bn", [True, False])
def test_pruned_branch_runs_the_masked_shared_weights(dual_bn):
    method = sdclr(dual_bn=dual_bn)
    method.train()
    x = views()[0][:, 1]
    ref = masked_copy(method.encoder, method.masks.masks())
    ref_proj = copy.deepcopy(method.projector)
    torch.testing.assert_close(method.pruned_forward(x), ref_proj(ref(x)))
    dense = method.projector(method.encoder(x))
    assert not torch.allclose(dense, method.pruned_forward(x), atol=1e-3)  # pruning matters


def test_gradients_of_the_pruned_branch_reach_only_the_kept_shared_weights():
    method = sdclr()
    method.train()
    x = views()[0][:, 1]
    ref = masked_copy(method.encoder, method.masks.masks())
    ref_proj = copy.deepcopy(method.projector)
    method.pruned_forward(x).pow(2).sum().backward()
    ref_proj(ref(x)).pow(2).sum().backward()
    for name, mask in method.masks.masks().items():
        grad = method.encoder.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0
        assert torch.all(grad[~mask] == 0)  # pruned entries get nothing
        # on the kept entries the gradient is the masked network's
        torch.testing.assert_close(grad[mask], ref.get_parameter(name).grad[mask])


def test_dual_bn_keeps_separate_running_statistics_for_the_pruned_branch():
    method = sdclr(dual_bn=True)
    method.train()
    x = views()[0][:, 1]
    dense_bn = method.encoder.bn1
    pruned_bn = method.pruned_encoder_norms.copies["bn1"]
    d0, p0 = dense_bn.running_mean.clone(), pruned_bn.running_mean.clone()
    method.pruned_forward(x)
    assert torch.equal(dense_bn.running_mean, d0) and not torch.equal(pruned_bn.running_mean, p0)
    assert int(pruned_bn.num_batches_tracked) == 1 and int(dense_bn.num_batches_tracked) == 0
    method.encoder(x)
    assert not torch.equal(dense_bn.running_mean, d0)
    # the pruned branch's BN affine parameters are trained (they are parameters of the method)
    ids = {id(p) for p in method.parameters()}
    assert id(pruned_bn.weight) in ids and pruned_bn.weight is not dense_bn.weight


def test_loss_is_nt_xent_between_the_dense_first_view_and_the_pruned_second_view():
    method = sdclr(temperature=0.2)
    method.train()
    batch = views()
    with torch.no_grad():
        out = method(batch)["loss"]
        z1 = method.projector(method.encoder(batch[0][:, 0]))
        z2 = method.pruned_forward(batch[0][:, 1])
        # positives are (dense x1_i, pruned x2_i): swapping the views changes the loss
        swapped = nt_xent(method.projector(method.encoder(batch[0][:, 1])),
                          method.pruned_forward(batch[0][:, 0]), 0.2)
    assert out.item() == pytest.approx(nt_xent(z1, z2, 0.2).item(), rel=1e-5)
    assert out.item() != pytest.approx(swapped.item(), rel=1e-3)


def test_encoder_stays_a_plain_backbone_and_masks_are_checkpointed():
    method = sdclr()
    plain = create_backbone("resnet_tiny", in_chans=3)
    plain.load_state_dict(method.encoder.state_dict())  # strict: same keys, nothing extra
    state = method.state_dict()
    assert "masks.conv1__weight" in state and state["masks.conv1__weight"].dtype == torch.bool
    fresh = sdclr(seed=5)
    stem = "conv1.weight"
    assert not torch.equal(fresh.masks.masks()[stem], method.masks.masks()[stem])
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.masks.masks().values(),
                                                 method.masks.masks().values()))


# --- two gloo ranks under DistributedDataParallel: every parameter is used in each step -------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank, world, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        method = sdclr(seed=rank)  # different on purpose: DDP broadcasts rank 0's state
        model = DistributedDataParallel(method)  # find_unused_parameters off: all must be used
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = views(seed=10 + rank)
        losses = []
        for step in range(3):
            if step == 1:
                method.set_epoch(1, 2)
            loss = model((x, y))["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        torch.save({"state": method.state_dict(), "losses": losses},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sdclr_trains_under_ddp_with_identical_weights_and_masks_on_both_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key, value in r0["state"].items():
        if "running" in key or "num_batches" in key:  # per-rank BN statistics (no sync_bn)
            continue
        assert torch.equal(value, r1["state"][key]), key
    assert all(torch.isfinite(torch.tensor(r0["losses"] + r1["losses"])))
