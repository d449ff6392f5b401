"""The torch loading path: ManifestDataset + TorchLoader + Pillow views, error policies, checks."""

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data import augment_torch
from ltscale.data.augment import EvalSpec, eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews, _crop_box
from ltscale.data.dataset import ManifestDataset
from ltscale.data.index import ShardIndex
from ltscale.data.loading import LoaderSettings, Normalizer
from ltscale.data.loading.torch_loader import TorchLoader
from ltscale.data.sampling import Batch, EpochSampler
from ltscale.data.shards import build_shards
from ltscale.data.sources import open_source
from ltscale.data.verify import check_shards

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CPU = torch.device("cpu")


def smooth(w, h, seed):
    """An RGB image with structure at every scale (gradients plus noise): crops differ visibly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / max(1, w - 1), yy * 255 / max(1, h - 1),
                    (xx + yy) * 127 / max(1, w + h)], -1)
    img = img + rng.normal(0, 20, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def build(root, out, kind="imagefolder", shard_bytes=1 << 30):
    build_shards(open_source(kind, root), out, source_kind=kind, source_path=str(root),
                 shard_bytes=shard_bytes, progress=False)
    return ShardIndex.load(out).load_all()


@pytest.fixture(scope="module")
def jpeg_ds(tmp_path_factory):
    """30 JPEGs of 48×40 in 3 classes, spread over several shards."""
    base = tmp_path_factory.mktemp("jpegs")
    for i in range(30):
        path = base / "tree" / f"k{i % 3}" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode(smooth(48, 40, i), "JPEG", quality=90))
    index = build(base / "tree", base / "ds", shard_bytes=30_000)
    assert len(index.shards) >= 3
    return base / "ds"


@pytest.fixture
def jpeg_copy(jpeg_ds, tmp_path):
    """A private copy of the JPEG shards that a test may damage."""
    shutil.copytree(jpeg_ds, tmp_path / "ds")
    return ShardIndex.load(tmp_path / "ds").load_all()


def load(directory):
    return ShardIndex.load(directory).load_all()


def make(index, views, *, workers=0, batch_size=8, seed=3, epoch=0, on_error="fail",
         tail="drop", shuffle="global", mean=MEAN, std=STD):
    rows = np.arange(len(index))
    ds = ManifestDataset(index, rows, index.label[rows], views, on_error=on_error)
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=seed, tail=tail, shuffle=shuffle)
    sampler.set_epoch(epoch)
    loader = TorchLoader(ds, sampler, LoaderSettings(workers=workers, prefetch=2,
                                                     on_error=on_error),
                         device=CPU, mean=mean, std=std)
    return loader, sampler, ds


def collect(loader):
    return [(x, y, p) for x, y, p in loader]


def same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(p1, p2)
        for (x1, y1, p1), (x2, y2, p2) in zip(a, b))


def expect(v, c):
    return (v / 255 - MEAN[c]) / STD[c]


# --- shapes and normalisation -------------------------------------------------------------------
def test_simclr_views_come_as_normalised_float_pairs(jpeg_ds):
    index = load(jpeg_ds)
    loader, sampler, _ = make(index, TrainViews(make_preset("simclr", 32, 3), 3))
    assert len(loader) == 3  # 30 // 8
    requests = list(sampler.batches())
    batches = collect(loader)
    assert len(batches) == 3 and loader.stats.batches == 3 and loader.stats.samples == 24
    for (x, y, pos), req in zip(batches, requests):
        assert x.shape == (8, 2, 3, 32, 32) and x.dtype == torch.float32
        np.testing.assert_array_equal(pos.numpy(), req.positions)
        np.testing.assert_array_equal(y.numpy(), index.label[req.positions])
        for c in range(3):  # the range normalised uint8 values of each channel can take
            assert x[:, :, c].min() >= expect(0, c) - 1e-5
            assert x[:, :, c].max() <= expect(255, c) + 1e-5
        assert not torch.equal(x[:, 0], x[:, 1])  # two different views
    assert loader.stats.reads >= 1 and loader.stats.bytes_read >= int(index.size[
        np.concatenate([r.positions for r in requests])].sum())


def test_normalizer_maps_pixel_values_to_standard_scores(tmp_path):
    colours = [(200, 100, 50), (0, 255, 17), (128, 128, 128), (9, 77, 250)]
    for i, c in enumerate(colours):
        path = tmp_path / "tree" / f"k{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (37, 29), c).save(path)
    index = build(tmp_path / "tree", tmp_path / "ds")
    preset = make_preset("simclr", 32, 3, jitter=0, grayscale=0, blur=0)  # colour unchanged
    loader, _, _ = make(index, TrainViews(preset, 3), batch_size=4, tail="keep")
    (x, y, pos), = collect(loader)
    assert x.shape == (4, 2, 3, 32, 32)
    for i, p in enumerate(pos.tolist()):
        colour = colours[int(str(index.path[p]).split("/")[1].split(".")[0])]
        for c in range(3):
            want = torch.full((2, 32, 32), expect(colour[c], c))
            torch.testing.assert_close(x[i, :, c], want, rtol=0, atol=1e-6)
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = Normalizer(MEAN, STD)(u8)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([expect(0, 0), expect(51, 1),
                                                              expect(255, 2)]), rtol=0, atol=1e-6)


def test_normalizer_refuses_a_channel_count_mismatch():
    with pytest.raises(DataError, match="1 channel"):
        Normalizer(MEAN, STD)(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))


# --- determinism and resume ---------------------------------------------------------------------
def test_batches_do_not_depend_on_the_number_of_workers(jpeg_ds):
    index = load(jpeg_ds)
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    serial, s0, _ = make(index, views, workers=0, epoch=1)
    parallel, s2, _ = make(index, views, workers=2, epoch=1)
    a, b = collect(serial), collect(parallel)
    assert len(a) == 3 and same(a, b)
    assert parallel.stats.samples == serial.stats.samples == 24
    assert parallel.stats.bytes_read == serial.stats.bytes_read > 0  # summed over workers
    s2.set_epoch(2)
    c = collect(parallel)  # persistent workers, next epoch
    assert len(c) == 3 and not torch.equal(c[0][2], a[0][2]) and not torch.equal(c[0][0], a[0][0])
    s0.set_epoch(2)
    assert same(collect(serial), c)


def test_mid_epoch_resume_continues_with_identical_batches(jpeg_ds):
    index = load(jpeg_ds)
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    reference, _, _ = make(index, views, batch_size=4, epoch=2)
    full = collect(reference)
    assert len(full) == 7
    first, sampler, _ = make(index, views, batch_size=4, epoch=2, workers=2)
    done, k = [], 3
    for batch in first:
        done.append(batch)
        sampler.advance()
        if len(done) == k:
            break
    state = sampler.state_dict()
    assert same(done, full[:k])
    resumed, fresh, _ = make(index, views, batch_size=4, epoch=0, seed=99)
    fresh.load_state_dict(state)
    assert len(resumed) == 7 - k
    assert same(collect(resumed), full[k:])


# --- views --------------------------------------------------------------------------------------
def test_eval_view_passes_a_size_by_size_png_through_unchanged(tmp_path):
    pixels = {}
    for i in range(4):
        arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = tmp_path / "tree" / f"k{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        pixels[f"k{i % 2}/{i}.png"] = arr
    index = build(tmp_path / "tree", tmp_path / "ds")
    ds = ManifestDataset(index, np.arange(4), index.label, EvalView(eval_spec(32), 3))
    x, y, pos, info = ds.__getitems__(Batch(np.array([3, 0, 2, 1]), np.zeros(4, np.uint64), 0))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32)
    for img, p in zip(x, pos.tolist()):
        np.testing.assert_array_equal(img.permute(1, 2, 0).numpy(), pixels[str(index.path[p])])
    assert info["skipped"] == [] and info["reads"] >= 1


class DraftSpy:
    def __init__(self, monkeypatch):
        self.factors = []
        original = augment_torch._draft

        def spy(*args):
            factor = original(*args)
            self.factors.append(factor)
            return factor

        monkeypatch.setattr(augment_torch, "_draft", spy)


def test_eval_view_of_a_larger_jpeg_uses_draft_and_the_right_size(monkeypatch):
    img = smooth(300, 200, 1)
    data = encode(img, "JPEG", quality=95)
    spy = DraftSpy(monkeypatch)
    out = EvalView(EvalSpec(32, 1.0), 3)(data)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert spy.factors == [4.0]  # 300×200 → 75×50, still ≥ the 48×32 resize
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((48, 32), Image.Resampling.BILINEAR)
    ref = np.asarray(full)[:, 8:40]
    assert np.abs(out.permute(1, 2, 0).numpy().astype(int) - ref).mean() < 4


def test_train_views_decode_a_big_jpeg_at_reduced_size(monkeypatch):
    data = encode(smooth(800, 800, 2), "JPEG", quality=95)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    spy = DraftSpy(monkeypatch)
    whole = make_preset("supervised", 64, 3, crop_scale=(1, 1), flip=False)
    out = TrainViews(whole, 3)(data, np.random.default_rng(0))
    assert out.shape == (1, 3, 64, 64)
    assert spy.factors == [8.0]  # the whole 800 px image to 64 px: DCT scaling 1/8
    ref = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref).mean() < 4
    # a smaller crop allows less shrinking, and the crop box is scaled to the drafted image
    part = make_preset("supervised", 64, 3, crop_scale=(0.1, 0.1), flip=False)
    box = _crop_box(part.views[0], 800, 800, np.random.default_rng(5))
    out = TrainViews(part, 3)(data, np.random.default_rng(5))
    side = min(box[2] - box[0], box[3] - box[1])
    assert spy.factors[1] == max(f for f in (1, 2, 4, 8) if side / f >= 64)
    ref = np.asarray(full.resize((64, 64), Image.Resampling.BILINEAR, box=box))
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref).mean() < 6


def test_png_is_never_drafted(monkeypatch):
    calls = []
    monkeypatch.setattr(Image.Image, "draft", lambda self, *a: calls.append(a))
    data = encode(smooth(200, 200, 3), "PNG")
    out = TrainViews(make_preset("supervised", 32, 3, crop_scale=(1, 1)), 3)(
        data, np.random.default_rng(0))
    assert out.shape == (1, 3, 32, 32) and calls == []


def test_rotation_views_are_exact_rotations(jpeg_ds):
    index = load(jpeg_ds)
    preset = make_preset("rotation", 16, 3)
    assert preset.outputs == 4
    loader, _, _ = make(index, TrainViews(preset, 3), batch_size=5)
    for x, _, _ in collect(loader):
        assert x.shape == (5, 4, 3, 16, 16)
        for k in range(4):
            for i in range(5):
                assert torch.equal(x[i, k], torch.rot90(x[i, 0], k, dims=(1, 2)))
        assert not torch.equal(x[:, 1], x[:, 0])


def test_byol_views_are_asymmetric_and_multi_view_repeats_them(jpeg_ds):
    preset = make_preset("byol", 32, 3)
    a, b = preset.views
    assert (a.blur_p, a.solarize_p) == (1.0, 0.0) and (b.blur_p, b.solarize_p) == (0.1, 0.2)
    assert a.crop_scale == b.crop_scale == (0.08, 1.0)
    four = make_preset("byol", 32, 3, views=4)
    assert four.outputs == 4 and four.views == (a, b, a, b)
    loader, _, _ = make(load(jpeg_ds), TrainViews(four, 3), batch_size=6)
    x, _, _ = collect(loader)[0]
    assert x.shape == (6, 4, 3, 32, 32)


def test_simclr_and_mocov2_presets_are_their_papers():
    # SimCLR App. A: crop 0.08–1, ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2, blur
    # p 0.5; MoCo v2: crop 0.2–1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, blur 0.5
    for name, crop, jitter in (("simclr", (0.08, 1.0), (0.8, 0.8, 0.8, 0.2)),
                               ("mocov2", (0.2, 1.0), (0.4, 0.4, 0.4, 0.1))):
        a, b = make_preset(name, 32, 3).views
        assert a == b
        assert (a.crop_scale, a.jitter, a.jitter_p, a.grayscale_p, a.blur_p, a.solarize_p) == \
            (crop, jitter, 0.8, 0.2, 0.5, 0.0), name


def test_one_channel_data_gives_one_channel(tiny_idx, tmp_path):
    index = build(tiny_idx, tmp_path / "ds", kind="idx")
    one = dict(mean=(0.5,), std=(0.25,))
    loader, _, _ = make(index, TrainViews(make_preset("simclr", 8, 1), 1), batch_size=6, **one)
    x, y, pos = collect(loader)[0]
    assert x.shape == (6, 2, 1, 8, 8)
    ev, _, _ = make(index, EvalView(eval_spec(8), 1), batch_size=6, shuffle="none", tail="keep",
                    **one)
    x, y, pos = collect(ev)[0]
    assert x.shape == (6, 1, 8, 8)
    # the class marks pixel (0, 0): label·100 survives the 8 px eval view unchanged
    torch.testing.assert_close(x[:, 0, 0, 0], (y.float() * 100 / 255 - 0.5) / 0.25,
                               rtol=0, atol=1e-6)


# --- error policies -----------------------------------------------------------------------------
def corrupt(index, row):
    """Overwrite the start of a member's data (JPEG SOI and headers) in place: same size."""
    path = index.root / index.shards[int(index.shard[row])]
    with open(path, "r+b") as fh:
        fh.seek(int(index.offset[row]))
        fh.write(b"\x00" * 64)
    return str(index.key[row]), index.shards[int(index.shard[row])]


@pytest.mark.parametrize("workers", [0, 2])
def test_fail_policy_names_the_corrupt_sample_and_its_shard(jpeg_copy, workers):
    key, shard = corrupt(jpeg_copy, 13)
    loader, _, _ = make(jpeg_copy, TrainViews(make_preset("simclr", 16, 3), 3), tail="keep",
                        workers=workers)
    with pytest.raises(DataError) as err:
        collect(loader)
    assert key in str(err.value) and shard in str(err.value)
    # the loader stopped its workers itself: nothing left for the garbage collector to wait on
    assert loader.loader._iterator is None


def test_skip_policy_finishes_the_epoch_and_reports_the_key(jpeg_copy, ltscale_log):
    key, _ = corrupt(jpeg_copy, 13)
    loader, _, _ = make(jpeg_copy, TrainViews(make_preset("simclr", 16, 3), 3), tail="keep",
                        on_error="skip")
    batches = collect(loader)
    assert len(batches) == 4  # 30 in batches of 8: 8, 8, 8, 6
    assert [k for k, _ in loader.stats.skipped] == [key]
    assert loader.stats.samples == 29 == sum(len(y) for _, y, _ in batches)
    assert 13 not in torch.cat([p for _, _, p in batches]).tolist()
    assert len(ltscale_log) == 1 and key in ltscale_log[0] and "skipped 1" in ltscale_log[0]


def test_skip_policy_counts_the_samples_a_truncated_shard_lost(jpeg_copy):
    last = len(jpeg_copy.shards) - 1
    rows = np.flatnonzero(jpeg_copy.shard == last)
    assert len(rows) >= 3
    cut = int(jpeg_copy.offset[rows[-2]]) + 50  # inside the second-to-last sample's image
    with open(jpeg_copy.root / jpeg_copy.shards[last], "r+b") as fh:
        fh.truncate(cut)
    lost = {str(jpeg_copy.key[r]) for r in rows if jpeg_copy.offset[r] + jpeg_copy.size[r] > cut}
    assert len(lost) == 2
    loader, _, _ = make(jpeg_copy, TrainViews(make_preset("simclr", 16, 3), 3), tail="keep",
                        on_error="skip", workers=2)
    collect(loader)
    assert {k for k, _ in loader.stats.skipped} == lost and len(loader.stats.skipped) == 2
    assert all("truncated" in why for _, why in loader.stats.skipped)
    assert loader.stats.samples == 30 - 2


def test_a_batch_of_only_bad_samples_stops_even_when_skipping(jpeg_copy):
    for row in (0, 1):
        corrupt(jpeg_copy, row)
    loader, _, _ = make(jpeg_copy, TrainViews(make_preset("simclr", 16, 3), 3), batch_size=2,
                        shuffle="none", tail="keep", on_error="skip")
    with pytest.raises(DataError, match="every sample of a batch"):
        collect(loader)


# --- shard checks -------------------------------------------------------------------------------
def test_check_shards_refuses_a_shard_whose_size_changed(jpeg_copy):
    assert check_shards(jpeg_copy) == len(jpeg_copy.shards)
    name = jpeg_copy.shards[1]
    with open(jpeg_copy.root / name, "ab") as fh:
        fh.write(b"\x00" * 512)
    with pytest.raises(DataError, match=f"{name} has .* bytes"):
        check_shards(jpeg_copy, np.arange(len(jpeg_copy)))
    # rows that do not touch the changed shard pass
    other = np.flatnonzero(jpeg_copy.shard != 1)
    assert check_shards(jpeg_copy, other) == len(jpeg_copy.shards) - 1


def test_checksum_mode_catches_a_same_size_byte_flip(jpeg_copy):
    row = 5
    name = jpeg_copy.shards[int(jpeg_copy.shard[row])]
    path = jpeg_copy.root / name
    raw = bytearray(path.read_bytes())
    raw[int(jpeg_copy.offset[row]) + 200] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert check_shards(jpeg_copy, mode="size") == len(jpeg_copy.shards)
    assert check_shards(jpeg_copy, mode="none") == 0
    with pytest.raises(DataError, match=f"{name}: SHA-256 differs"):
        check_shards(jpeg_copy, mode="checksum")
    with pytest.raises(DataError, match="unknown shard check"):
        check_shards(jpeg_copy, mode="fast")


def test_manifest_rows_outside_the_index_are_refused(jpeg_ds):
    index = load(jpeg_ds)
    views = EvalView(eval_spec(16), 3)
    with pytest.raises(DataError, match=f"row {len(index)} is not in the shard index"):
        ManifestDataset(index, np.array([0, len(index)]), np.zeros(2), views)
    with pytest.raises(DataError, match="row -1"):
        ManifestDataset(index, np.array([-1, 3]), np.zeros(2), views)
    with pytest.raises(DataError, match="on_error"):
        ManifestDataset(index, np.array([0]), np.zeros(1), views, on_error="ignore")


def test_a_drafted_decode_whose_sides_shrank_unevenly_keeps_the_box_inside():
    # 500×375 at 1/8: 63×47, so the width shrank by 7.94 and the height by 7.98; a box reaching
    # the bottom edge, scaled by the width's factor, ended 0.2 px below the image (ValueError)
    data = encode(smooth(500, 375, 4), "JPEG", quality=90)
    whole = make_preset("supervised", 8, 3, crop_scale=(1, 1), flip=False)
    out = TrainViews(whole, 3)(data, np.random.default_rng(0))
    assert out.shape == (1, 3, 8, 8)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize(
        (8, 8), Image.Resampling.BILINEAR))
    assert np.abs(out[0].permute(1, 2, 0).numpy().astype(int) - ref).mean() < 6


class _Finaliser:
    """A cycle whose finaliser records the process that ran it (a DALI pipeline's shutdown hangs
    when run in a forked worker: its threads stay in the parent)."""

    def __init__(self, path):
        self.path, self.me = path, self

    def __del__(self):
        with open(self.path, "a") as fh:
            fh.write(f"{__import__('os').getpid()}\n")


class _CollectingViews(TrainViews):
    def __call__(self, data, rng):
        import gc

        gc.collect()  # a collection in the worker, as any allocation may trigger
        return super().__call__(data, rng)


def test_garbage_inherited_by_a_forked_worker_is_not_finalised_there(jpeg_ds, tmp_path):
    import gc
    import os

    index = load(jpeg_ds)
    views = _CollectingViews(make_preset("simclr", 24, 3), 3)
    marks = tmp_path / "finalised.txt"
    gc.disable()
    try:
        _Finaliser(marks)  # unreachable at once, but a cycle: only the collector finalises it
        loader, _, _ = make(index, views, workers=2, epoch=1)
        assert len(collect(loader)) == 3
        loader.close()
    finally:
        gc.enable()
    gc.collect()
    assert marks.read_text().split() == [str(os.getpid())]  # by the parent only, once


def test_a_child_forked_after_a_worker_loader_exists_starts_with_the_heap_frozen(jpeg_ds):
    """The freeze happens at the fork itself, before any Python code of the child — torch's
    worker allocates (and may collect) before a ``worker_init_fn`` runs; CI hung there once."""
    import gc
    import os

    make(load(jpeg_ds), TrainViews(make_preset("simclr", 24, 3), 3), workers=2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if gc.get_freeze_count() > 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
