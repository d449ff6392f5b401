"""The DALI loader backend on CPU: same ids as the torch backend, shapes, eval pixels, error policy,
mid-epoch resume. Small real JPEG/PNG files in an ImageFolder tree, built into shards."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install "
                    "nvidia-dali-cuda130); the DALI loader backend cannot be tested")

from ltscale.core.errors import DataError  # noqa: E402
from ltscale.data.augment import eval_spec, make_preset  # noqa: E402
from ltscale.data.augment_torch import EvalView  # noqa: E402
from ltscale.data.dataset import ManifestDataset  # noqa: E402
from ltscale.data.index import ShardIndex  # noqa: E402
from ltscale.data.loading import LoaderSettings, Normalizer  # noqa: E402
from ltscale.data.loading.dali_loader import DaliLoader, _Source, check_image_bytes  # noqa: E402
from ltscale.data.loading.torch_loader import TorchLoader  # noqa: E402
from ltscale.data.sampling import EpochSampler  # noqa: E402
from ltscale.data.shards import build_shards  # noqa: E402
from ltscale.data.sources import open_source  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
CPU = torch.device("cpu")


def picture(seed: int, w: int, h: int, channels: int = 3) -> np.ndarray:
    """Smooth gradients plus a block and mild noise: structure that survives JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    planes = []
    for c in range(channels):
        a, b = rng.uniform(-3, 3, 2)
        planes.append(128 + 60 * np.sin(a * xx / w + b * yy / h + c))
    img = np.stack(planes, -1)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0, 255, channels)
    img += rng.normal(0, 4, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if channels == 1 else img


def make_tree(root, n_per_class=8, size=(48, 40), channels=3, fmt=None):
    for c, name in enumerate(("ant", "bee", "cow")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            ext = fmt or ("png" if i % 3 == 2 else "jpg")
            buf = io.BytesIO()
            Image.fromarray(picture(100 * c + i, *size, channels)).save(
                buf, format="PNG" if ext == "png" else "JPEG", **({"quality": 90}
                                                                  if ext == "jpg" else {}))
            (root / name / f"{name}{i:02d}.{ext}").write_bytes(buf.getvalue())
    return root


def shards_of(root, out) -> ShardIndex:
    build_shards(open_source("imagefolder", root), out, source_kind="imagefolder",
                 source_path=str(root), progress=False)
    return ShardIndex.load(out)


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dali-rgb")
    return shards_of(make_tree(tmp / "tree"), tmp / "ds")


def dataset(index, views=None, on_error="fail"):
    return ManifestDataset.from_split(index, "train", views, on_error=on_error)


def sampler(n, **kw):
    kw = {"batch_size": 5, "seed": 3, "tail": "drop"} | kw
    return EpochSampler(n, **kw)


def dali(ds, s, *, preset=None, spec=None, channels=3, workers=1, py_workers=0):
    return DaliLoader(ds, s, LoaderSettings(backend="dali", workers=workers), device=CPU,
                      mean=MEAN[:channels], std=STD[:channels],
                      preset=preset, eval_spec=spec, channels=channels, py_workers=py_workers)


def positions(loader):
    return [p.tolist() for _, _, p in loader]


# --- ids ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("tail", ["drop", "keep"])
def test_same_positions_as_the_torch_backend_per_epoch_and_rank(rgb, tail):
    spec = eval_spec(32)
    ds_t, ds_d = dataset(rgb, EvalView(spec, 3)), dataset(rgb)
    for rank in (0, 1):
        kw = {"tail": tail, "rank": rank, "world_size": 2, "shuffle": "global"}
        st, sd = sampler(len(ds_t), **kw), sampler(len(ds_d), **kw)
        torch_loader = TorchLoader(ds_t, st, LoaderSettings(workers=0), device=CPU,
                                   mean=MEAN, std=STD)
        dali_loader = dali(ds_d, sd, spec=spec)
        for epoch in (0, 1):
            st.set_epoch(epoch), sd.set_epoch(epoch)
            assert len(dali_loader) == len(torch_loader) == sd.remaining_batches()
            got, want = positions(dali_loader), positions(torch_loader)
            assert got == want and len(got) == sd.remaining_batches()
            assert dali_loader.stats.batches == len(got)
            assert dali_loader.stats.samples == sum(map(len, got))
            assert dali_loader.stats.bytes_read > 0 and dali_loader.stats.reads > 0
        if tail == "keep":  # 24 samples, batches of 5 over 2 ranks: a short last batch
            assert any(len(b) < 5 for b in got)


@pytest.mark.parametrize("py_workers", [0, 1])
def test_skip_policy_keeps_the_sampler_ids_minus_the_bad_sample(corrupt, py_workers):
    """The pipeline works batches ahead, in this process or in a worker: every batch still holds
    the sampler's ids in order, less the bad sample (a short batch), epoch after epoch, and the
    counters are this epoch's."""
    idx, key = corrupt
    ds = dataset(idx, on_error="skip")
    bad = int(np.flatnonzero(idx.key[ds.rows] == key)[0])  # its manifest position
    s = sampler(len(ds), tail="keep", rank=1, world_size=2)
    loader = dali(ds, s, spec=eval_spec(32), py_workers=py_workers)
    hit = 0
    for epoch in (0, 1, 2):
        s.set_epoch(epoch)
        want = [[p for p in b.positions.tolist() if p != bad] for b in s.batches()]
        got = positions(loader)
        assert got == want
        st = loader.stats
        assert (st.batches, st.samples) == (len(want), sum(map(len, want)))
        assert st.bytes_read > 0 and st.reads > 0
        dropped = bad in s.rank_positions()
        hit += dropped
        assert [k for k, _ in st.skipped] == ([key] if dropped else [])
    assert hit  # the bad sample was on this rank in some epoch


def test_fail_policy_in_a_worker_process_raises_naming_the_sample(corrupt):
    idx, key = corrupt
    ds = dataset(idx, on_error="fail")
    loader = dali(ds, sampler(len(ds), tail="keep"), preset=make_preset("cifar", 24),
                  py_workers=1)
    with pytest.raises(DataError, match=f"^sample {key} in shard .*FF D9"):
        list(loader)


def test_the_source_is_stateless_and_ends_the_epoch(rgb):
    """DALI asks ahead and in any order: batch i depends on i only, and every i past the plan
    raises StopIteration."""
    from nvidia.dali.types import BatchInfo

    ds = dataset(rgb)
    plan = [b.positions for b in sampler(len(ds), tail="keep").batches()]
    src = _Source(ds, plan)
    late = src(BatchInfo(len(plan) - 1, 0))
    first = src(BatchInfo(0, 0))
    assert [int(p[0]) for p in late[1]] == plan[-1].tolist() and len(late[0]) < 5  # short
    assert [int(p[0]) for p in first[1]] == plan[0].tolist()
    assert all(len(m) == 0 for m in first[2][1:]) and len(first[2][0]) > 0
    for i in (len(plan), len(plan) + 1, len(plan) + 5):
        with pytest.raises(StopIteration):
            src(BatchInfo(i, 0))
    import pickle

    assert [int(p[0]) for p in pickle.loads(pickle.dumps(src))(BatchInfo(0, 0))[1]] == \
        plan[0].tolist()  # picklable (spawned workers get a copy)


def test_stopping_early_and_iterating_again(rgb):
    """A consumer that stops mid-epoch (batches were already being prepared ahead) and starts
    again gets the sampler's remaining batches, from a fresh pipeline."""
    ds = dataset(rgb)
    s = sampler(len(ds), batch_size=4)
    loader = dali(ds, s, preset=make_preset("cifar", 24))
    full = [b.positions.tolist() for b in s.batches()]
    it = iter(loader)
    first = next(it)[2].tolist()
    it.close()
    s.advance()
    assert [first] + positions(loader) == full


# --- shapes, values ------------------------------------------------------------------------------
def test_simclr_gives_two_views_float32(rgb):
    preset = make_preset("simclr", 32)
    ds = dataset(rgb)
    loader = dali(ds, sampler(len(ds)), preset=preset, workers=2)
    batches = list(loader)
    assert len(batches) == 4
    for x, y, pos in batches:
        assert x.shape == (5, 2, 3, 32, 32) and x.dtype == torch.float32
        assert y.dtype == pos.dtype == torch.int64
        np.testing.assert_array_equal(y.numpy(), ds.labels[pos.numpy()])
        assert not torch.equal(x[:, 0], x[:, 1])  # two different views
    # reproducible: same seed and epoch → same views; another epoch → different views
    again = list(dali(ds, sampler(len(ds)), preset=preset, workers=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    s = sampler(len(ds))
    s.set_epoch(1)
    other = next(iter(dali(ds, s, preset=preset)))[0]
    assert not torch.equal(other, batches[0][0])


@pytest.mark.parametrize("name", ["byol", "supervised", "supervised_cifar"])
def test_other_presets_run(rgb, name):
    preset = make_preset(name, 24)
    ds = dataset(rgb)
    x, _, _ = next(iter(dali(ds, sampler(len(ds)), preset=preset)))
    want = (5, 2, 3, 24, 24) if len(preset.views) == 2 else (5, 3, 24, 24)
    assert x.shape == want and torch.isfinite(x).all()


def test_rotation_preset_gives_four_rotated_copies(rgb):
    preset = make_preset("rotation", 32)
    ds = dataset(rgb)
    x, _, _ = next(iter(dali(ds, sampler(len(ds)), preset=preset)))
    assert x.shape == (5, 4, 3, 32, 32) and x.dtype == torch.float32
    for k in range(4):
        assert torch.equal(x[:, k], torch.rot90(x[:, 0], k, dims=(-2, -1)))
    assert torch.equal(x[:, 2], x[:, 0].flip(-1).flip(-2))


def test_eval_equals_the_torch_eval_view(rgb, tmp_path):
    spec = eval_spec(32)  # 48×40 → shorter side 32, centre crop 32×32
    ds = dataset(rgb, EvalView(spec, 3))
    norm = Normalizer(MEAN, STD)
    x, _, pos = next(iter(dali(ds, sampler(len(ds), shuffle="none"), spec=spec)))
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32
    want = torch.stack([norm(ds[int(p)][0]) for p in pos])
    assert (x - want).abs().mean() < 0.1  # bilinear resize implementations differ slightly

    # an image already size × size: no resize, the centre crop is the whole image → exact
    idx = shards_of(make_tree(tmp_path / "sq", n_per_class=3, size=(32, 32), fmt="png"),
                    tmp_path / "sq-ds")
    ds = dataset(idx, EvalView(spec, 3))
    x, _, pos = next(iter(dali(ds, sampler(len(ds), shuffle="none", batch_size=9), spec=spec)))
    want = torch.stack([norm(ds[int(p)][0]) for p in pos])
    torch.testing.assert_close(x, want, rtol=0, atol=1e-5)


def test_grayscale_png(tmp_path):
    idx = shards_of(make_tree(tmp_path / "g", n_per_class=4, channels=1, fmt="png"),
                    tmp_path / "g-ds")
    ds = dataset(idx)
    x, _, _ = next(iter(dali(ds, sampler(len(ds), batch_size=4), channels=1,
                             preset=make_preset("simclr", 24, channels=1))))
    assert x.shape == (4, 2, 1, 24, 24) and x.dtype == torch.float32
    spec = eval_spec(32)
    ds = dataset(idx, EvalView(spec, 1))
    x, _, pos = next(iter(dali(ds, sampler(len(ds), batch_size=4, shuffle="none"), channels=1,
                               spec=spec)))
    assert x.shape == (4, 1, 32, 32)
    want = torch.stack([Normalizer(MEAN[:1], STD[:1])(ds[int(p)][0]) for p in pos])
    assert (x - want).abs().mean() < 0.1


# --- bad input -----------------------------------------------------------------------------------
def test_structural_checks():
    jpg = io.BytesIO()
    Image.fromarray(picture(0, 16, 16)).save(jpg, format="JPEG")
    png = io.BytesIO()
    Image.fromarray(picture(0, 16, 16)).save(png, format="PNG")
    jpg, png = jpg.getvalue(), png.getvalue()
    assert check_image_bytes(jpg) is None and check_image_bytes(png) is None
    assert check_image_bytes(jpg + b"\x00\x00") is None  # padding after EOI is fine
    assert "FF D9" in check_image_bytes(jpg[:-2] + b"\x12\x34")
    assert "IEND" in check_image_bytes(png[:-20])
    assert "not a JPEG" in check_image_bytes(b"hello world, not an image")


@pytest.fixture
def corrupt(tmp_path):
    """A dataset whose one JPEG lost its end-of-image marker (overwritten in the shard)."""
    idx = shards_of(make_tree(tmp_path / "c"), tmp_path / "c-ds")
    row = next(r for r in range(len(idx)) if idx.ext[r] == "jpg" and idx.split[r] == 0)
    end = int(idx.offset[row] + idx.size[row])
    with open(idx.root / idx.shards[idx.shard[row]], "r+b") as f:
        f.seek(end - 2)
        f.write(b"\x00\x07")
    return idx, str(idx.key[row])


def test_skip_policy_leaves_the_sample_out_and_reports_it(corrupt, ltscale_log):
    idx, key = corrupt
    ds = dataset(idx, on_error="skip")
    loader = dali(ds, sampler(len(ds), tail="keep"), preset=make_preset("cifar", 24))
    seen = [p for _, _, pos in loader for p in pos.tolist()]
    assert len(seen) == len(ds) - 1
    assert [k for k, _ in loader.stats.skipped] == [key]
    assert "FF D9" in loader.stats.skipped[0][1] and key in ltscale_log[0]


def test_fail_policy_raises_naming_the_sample(corrupt):
    idx, key = corrupt
    ds = dataset(idx, on_error="fail")
    loader = dali(ds, sampler(len(ds), tail="keep"), preset=make_preset("cifar", 24))
    with pytest.raises(DataError, match=f"sample {key} in shard"):
        list(loader)


@pytest.mark.parametrize("batch_size,which", [(6, 0), (2, 0), (2, -1)])
def test_decoder_error_names_the_batch(tmp_path, batch_size, which):
    """Damage inside the entropy-coded data passes the check; DALI's error becomes a DataError
    naming the keys of the batch that failed — also when the pipeline was working ahead."""
    idx = shards_of(make_tree(tmp_path / "d", n_per_class=2, fmt="jpg"), tmp_path / "d-ds")
    ds = dataset(idx, on_error="skip")
    row = int(ds.rows[which])
    start, size = int(idx.offset[row]), int(idx.size[row])
    with open(idx.root / idx.shards[idx.shard[row]], "r+b") as f:  # keep SOI..SOF, wreck the rest
        f.seek(start + 20)
        f.write(b"\xff\x01" * ((size - 24) // 2))
    loader = dali(ds, sampler(len(ds), shuffle="none", batch_size=batch_size, tail="keep"),
                  spec=eval_spec(32))
    seen = []
    with pytest.raises(DataError, match=str(idx.key[row])) as err:
        for _, _, pos in loader:
            seen += pos.tolist()
    others = [str(idx.key[r]) for r in ds.rows if r != row]
    named = [k for k in others if k in str(err.value)]
    assert len(named) == batch_size - 1  # the failing batch's other samples, no more
    # the batches before the bad one were delivered, in order
    assert seen == list(range(len(ds) - batch_size if which < 0 else 0))


def test_missing_dali_is_a_data_error_naming_the_fix(rgb, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "nvidia.dali", None)
    with pytest.raises(DataError, match="pip install nvidia-dali-cuda130.*backend=torch"):
        dali(dataset(rgb), sampler(24), spec=eval_spec(32))


# --- resume --------------------------------------------------------------------------------------
@pytest.mark.parametrize("py_workers", [0, 1])
def test_mid_epoch_resume_yields_exactly_the_rest(rgb, py_workers):
    ds = dataset(rgb)
    preset = make_preset("cifar", 24)
    full_sampler = sampler(len(ds), batch_size=4, world_size=2, rank=1)
    full_sampler.set_epoch(2)
    full = positions(dali(ds, full_sampler, preset=preset, py_workers=py_workers))

    s = sampler(len(ds), batch_size=4, world_size=2, rank=1)
    s.set_epoch(2)
    loader = dali(ds, s, preset=preset, py_workers=py_workers)
    done = []
    for i, (_, _, pos) in enumerate(loader):  # as the training loop: advance after each step
        done.append(pos.tolist())
        s.advance()
        if i == 1:
            break
    state = s.state_dict()
    resumed = sampler(len(ds), batch_size=4, world_size=2, rank=1)
    resumed.load_state_dict(state)
    loader2 = dali(ds, resumed, preset=preset, py_workers=py_workers)
    assert len(loader2) == len(full) - 2
    rest = positions(loader2)
    assert done + rest == full
