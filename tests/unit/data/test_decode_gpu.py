"""``data.loader.decode: gpu`` on a CPU device (torchvision's CPU decoder in the training process,
the views made with tensor ops) against the Pillow path (``decode: cpu``) on the same sampler.

Labels, positions, order and shapes must be equal; pixels equal within a tolerance, as the mean
absolute difference per batch in uint8 levels:

- against the Pillow path with its reduced-size JPEG decoding turned off (the same full-size
  libjpeg-turbo decode on both sides), ``EXACT`` = 0.05 for presets without blur: the device
  path reproduces Pillow's bilinear resampling in integer arithmetic (``resample_device``) and
  the same colour map, so only a one-level rounding here and there differs (measured < 0.001);
  ``BLUR`` = 0.5 for presets that blur: an exact Gaussian against Pillow's three box passes
  (measured up to 0.38);
- ``LOOSE`` = 1.5 against the Pillow path as it runs, which decodes a JPEG at 1/2–1/8 of its DCT
  size wherever every crop allows and resamples that (measured up to 0.53).

A view drawn differently (another crop, flip, colour factor) is tens of levels away on these
gradient images (``test_a_wrong_draw_would_be_far_outside_the_tolerance``).
"""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from ltscale.config.loading import recipe_from_dict
from ltscale.core.errors import DataError, RecipeError
from ltscale.data import augment_torch
from ltscale.data.augment import eval_spec, make_preset, preset_names
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.index import ShardIndex
from ltscale.data.loading import LoaderSettings, build_loader
from ltscale.data.loading import decode_gpu as decode_gpu_module
from ltscale.data.loading.torch_loader import TorchLoader
from ltscale.data.resample_device import resample
from ltscale.data.sampling import Batch, EpochSampler
from ltscale.stages.loaders import settings as stage_settings
from tests.unit.data.test_loader_torch import build, corrupt, encode

EXACT, BLUR, LOOSE = 0.05, 0.5, 1.5
CPU = torch.device("cpu")
SIZES = [(96, 72), (48, 40), (40, 56), (64, 64), (150, 100)]


def photo(w: int, h: int, seed: int, channels: int = 3) -> Image.Image:
    """Gradients plus mild noise: a view's position and orientation show, as in a photo."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), 128 + 100 * np.sin(xx / 7 + yy / 11)],
                   -1) + rng.normal(0, 6, (h, w, 3))
    img = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return img.convert("L") if channels == 1 else img


def write_tree(root, n: int, channels: int, png_every: int = 0):
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        fmt = "PNG" if png_every and i % png_every == 0 else "JPEG"
        path = root / f"k{i % 3}" / f"{i:02d}.{fmt.lower().replace('jpeg', 'jpg')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        kw = {"quality": 90} if fmt == "JPEG" else {}
        path.write_bytes(encode(photo(w, h, i, channels), fmt, **kw))


def photo_shards(tmp_path_factory) -> dict:
    """{channels: shard directory}: 20 JPEGs of five sizes, 3 classes, several shards."""
    out = {}
    for channels in (1, 3):
        base = tmp_path_factory.mktemp(f"photos{channels}")
        write_tree(base / "tree", 20, channels)
        build(base / "tree", base / "ds", shard_bytes=40_000)
        out[channels] = base / "ds"
    return out


def private_copy(directory, tmp_path) -> ShardIndex:
    """A copy of the shards at ``directory`` that a test may damage."""
    shutil.copytree(directory, tmp_path / "ds")
    return ShardIndex.load(tmp_path / "ds").load_all()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return photo_shards(tmp_path_factory)


@pytest.fixture
def rgb_copy(shards, tmp_path):
    return private_copy(shards[3], tmp_path)


def make(index, views, decode, *, channels=3, workers=0, batch_size=6, seed=3, epoch=1,
         on_error="fail", shuffle="global", tail="keep", device=CPU):
    """A torch loader whose normalisation is the identity: its floats are the uint8 pixels."""
    rows = np.arange(len(index))
    ds = ManifestDataset(index, rows, index.label[rows], views, on_error=on_error)
    sampler = EpochSampler(len(ds), batch_size=batch_size, seed=seed, tail=tail, shuffle=shuffle)
    sampler.set_epoch(epoch)
    loader = TorchLoader(ds, sampler, LoaderSettings(workers=workers, prefetch=2, decode=decode,
                                                     on_error=on_error),
                         device=device, mean=(0.0,) * channels, std=(1 / 255,) * channels)
    return loader, sampler


def collect(loader):
    return [(x, y, p) for x, y, p in loader]


def compare(a, b) -> float:
    """The largest per-batch mean |difference| of two loaders' epochs that must agree in
    everything else."""
    assert len(a) == len(b) > 0
    worst = 0.0
    for (xa, ya, pa), (xb, yb, pb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(pa, pb)
        assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.float32
        worst = max(worst, float((xa - xb).abs().mean()))
    return worst


@pytest.fixture
def no_draft(monkeypatch):
    """The Pillow path decoding every JPEG at full size (as the device path does)."""
    monkeypatch.setattr(augment_torch, "_draft", lambda *args: 1.0)


# --- the same views as the Pillow path ---------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", preset_names())
def test_every_train_preset_draws_the_views_of_the_pillow_path(shards, name, channels,
                                                               monkeypatch):
    index = ShardIndex.load(shards[channels]).load_all()
    preset = make_preset(name, 24, channels, views=3 if name == "byol" else None)
    views = TrainViews(preset, channels)
    gpu = collect(make(index, views, "gpu", channels=channels)[0])
    assert compare(collect(make(index, views, "cpu", channels=channels)[0]), gpu) < LOOSE
    monkeypatch.setattr(augment_torch, "_draft", lambda *args: 1.0)
    tolerance = BLUR if any(v.blur_p for v in preset.views) else EXACT
    assert compare(collect(make(index, views, "cpu", channels=channels)[0]), gpu) < tolerance
    assert gpu[0][0].shape[-3:] == (channels, 24, 24)


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_view_matches_the_pillow_path(shards, channels, no_draft):
    index = ShardIndex.load(shards[channels]).load_all()
    views = EvalView(eval_spec(32, 0.875), channels)
    cpu = collect(make(index, views, "cpu", channels=channels, shuffle="none")[0])
    gpu = collect(make(index, views, "gpu", channels=channels, shuffle="none")[0])
    assert gpu[0][0].shape == (6, channels, 32, 32)
    assert compare(cpu, gpu) < EXACT


def test_a_wrong_draw_would_be_far_outside_the_tolerance(shards):
    index = ShardIndex.load(shards[3]).load_all()
    views = TrainViews(make_preset("supervised", 24, 3), 3)
    a = collect(make(index, views, "gpu", seed=3)[0])
    b = collect(make(index, views, "gpu", seed=4)[0])  # other seeds, same positions
    diff = max(float((xa - xb).abs().mean()) for (xa, _, _), (xb, _, _) in zip(a, b))
    assert diff > 10 * LOOSE


def test_resample_is_pillows_bilinear_resize_with_a_box():
    """Pillow's filter reads around the box (clipped to the image), antialiases when shrinking;
    the device resampler follows it to within one level of intermediate rounding."""
    rng = np.random.default_rng(0)
    for trial in range(60):
        w, h = (int(v) for v in rng.integers(4, 120, 2))
        channels = 3 if trial % 2 else 1
        arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1)))
        if trial % 6 == 0:
            box = (0, 0, w, h)
        ow, oh = (int(v) for v in rng.integers(1, 100, 2))
        pil = Image.fromarray(arr if channels == 3 else arr[..., 0])
        ref = np.asarray(pil.resize((ow, oh), Image.Resampling.BILINEAR, box=box))
        out = resample(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), box, ow, oh)
        got = out.permute(1, 2, 0).numpy().astype(int).reshape(ref.shape)
        assert np.abs(got - ref).max() <= 1, (w, h, box, ow, oh)
    same = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    assert resample(same, (0, 0, 4, 3), 4, 3) is same  # nothing to resample


# --- determinism: workers, resume ---------------------------------------------------------------
def test_workers_hand_over_the_same_batches_as_the_main_process(shards):
    index = ShardIndex.load(shards[3]).load_all()
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    serial = collect(make(index, views, "gpu")[0])
    parallel, sampler = make(index, views, "gpu", workers=2)
    got = collect(parallel)
    assert compare(serial, got) == 0.0
    assert parallel.stats.samples == 20 and parallel.stats.bytes_read > 0


def test_mid_epoch_resume_continues_with_identical_batches(shards):
    index = ShardIndex.load(shards[3]).load_all()
    views = TrainViews(make_preset("mocov2", 24, 3), 3)
    full = collect(make(index, views, "gpu", batch_size=4, tail="drop", epoch=2)[0])
    first, sampler = make(index, views, "gpu", batch_size=4, tail="drop", epoch=2, workers=2)
    done = []
    for batch in first:
        done.append(batch)
        sampler.advance()
        if len(done) == 2:
            break
    state = sampler.state_dict()
    resumed, fresh = make(index, views, "gpu", batch_size=4, tail="drop", epoch=0, seed=99)
    fresh.load_state_dict(state)
    assert compare(done, full[:2]) == 0.0
    assert compare(collect(resumed), full[2:]) == 0.0


# --- mixed shards: a PNG is decoded in the worker ----------------------------------------------
def test_a_png_sample_is_decoded_in_the_worker_and_augmented_on_the_device(tmp_path, no_draft):
    write_tree(tmp_path / "tree", 12, 3, png_every=3)
    index = build(tmp_path / "tree", tmp_path / "ds")
    views = TrainViews(make_preset("simclr", 24, 3), 3)
    ds = ManifestDataset(index, np.arange(12), index.label, views)
    enc, _, pos, _ = ds.encoded_items(Batch(np.arange(12), np.arange(12, dtype=np.uint64), 0))
    for i, p in enumerate(pos.tolist()):
        png = str(index.path[p]).endswith(".png")
        w, h = SIZES[int(str(index.path[p]).split("/")[1][:2]) % len(SIZES)]
        assert enc.shapes[i] == ((3, h, w) if png else None)
        assert (enc.payload(i)[:2].tolist() == [0xFF, 0xD8]) != png
    cpu = collect(make(index, views, "cpu", batch_size=4)[0])
    assert compare(cpu, collect(make(index, views, "gpu", batch_size=4)[0])) < BLUR


def test_one_channel_png_shards_through_a_recipe(tiny_idx, tmp_path):
    """The idx source's PNGs: every sample takes the worker's decode; the stage wiring carries
    ``data.loader.decode`` to the loader."""
    from ltscale.stages.context import make_context
    from ltscale.stages.loaders import train_loader

    seen = {}
    for decode in ("cpu", "gpu"):
        recipe = recipe_from_dict({
            "output_dir": str(tmp_path / "out"), "device": "cpu",
            "data": {"source": {"kind": "idx", "path": str(tiny_idx)},
                     "shards": str(tmp_path / "shards"), "image_size": 8, "channels": 1,
                     "mean": [0.0], "std": [1 / 255], "loader": {"decode": decode}},
            "manifest": {"imbalance": "none", "noise": "none"},
            "pretrain": {"augment": {"preset": "cifar"}}})
        ctx = make_context(recipe, progress=False)
        loader, sampler = train_loader(ctx, augment=recipe.pretrain.augment, batch_size=8,
                                       workers=0, seed=5, epochs=2)
        assert (loader.decoder is None) == (decode == "cpu")
        sampler.set_epoch(1)
        seen[decode] = collect(loader)
    assert compare(seen["cpu"], seen["gpu"]) < EXACT  # 8-px crops of noise: edges matter


# --- bad JPEGs: the Pillow path's error contract ------------------------------------------------
def damage_data(index, row):
    """Zero the second half of a member in place: its header still reads, its data does not."""
    path = index.root / index.shards[int(index.shard[row])]
    size = int(index.size[row])
    with open(path, "r+b") as fh:
        fh.seek(int(index.offset[row]) + size // 2)
        fh.write(b"\x00" * (size - size // 2))
    return str(index.key[row]), index.shards[int(index.shard[row])]


def damage_tables(index, row):
    """Point the first component of a member's scan at Huffman tables 3, which no JPEG defines:
    the header still reads, and every decoder must refuse the scan."""
    path = index.root / index.shards[int(index.shard[row])]
    raw = bytearray(path.read_bytes())
    start = int(index.offset[row])
    sos = raw.find(b"\xff\xda", start, start + int(index.size[row]))
    raw[sos + 6] = 0x33  # FF DA, length (2), component count, selector, then the tables byte
    path.write_bytes(bytes(raw))
    return str(index.key[row]), index.shards[int(index.shard[row])]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_jpeg_that_fails_to_decode_is_named_with_its_shard(rgb_copy, workers):
    key, shard = damage_data(rgb_copy, 7)
    loader, _ = make(rgb_copy, TrainViews(make_preset("simclr", 24, 3), 3), "gpu",
                     workers=workers)
    with pytest.raises(DataError) as err:
        collect(loader)
    assert str(err.value).startswith(f"sample {key} in shard {shard}: cannot decode image (")
    assert "decode_jpeg.cpp" not in str(err.value)  # torchvision's source location left out
    assert loader.loader._iterator is None  # workers stopped


def test_skip_policy_leaves_bad_jpegs_out_and_reports_them(rgb_copy, ltscale_log):
    bad_data, _ = damage_data(rgb_copy, 7)      # fail in the device decode
    bad_tables, _ = damage_tables(rgb_copy, 9)
    bad_header, _ = corrupt(rgb_copy, 12)       # fails in the worker, as on the Pillow path
    loader, _ = make(rgb_copy, TrainViews(make_preset("simclr", 24, 3), 3), "gpu",
                     on_error="skip", workers=2)
    batches = collect(loader)
    bad = sorted([bad_data, bad_tables, bad_header])
    assert sorted(k for k, _ in loader.stats.skipped) == bad
    assert all(why.startswith(f"sample {k} in shard ") and "cannot decode image" in why
               for k, why in loader.stats.skipped)
    assert loader.stats.samples == 17 == sum(len(y) for _, y, _ in batches)
    seen = torch.cat([p for _, _, p in batches]).tolist()
    assert not {7, 9, 12} & set(seen) and len(seen) == 17
    warnings = [line for line in ltscale_log if "skipped" in line]
    assert len(warnings) == 1 and "skipped 3" in warnings[0]
    assert all(key in warnings[0] for key in bad)


def test_a_batch_of_only_bad_jpegs_stops_even_when_skipping(rgb_copy):
    for row in (0, 1):
        damage_data(rgb_copy, row)
    loader, _ = make(rgb_copy, TrainViews(make_preset("simclr", 24, 3), 3), "gpu",
                     batch_size=2, shuffle="none", on_error="skip")
    with pytest.raises(DataError, match="every sample of a batch of 2 failed to load"):
        collect(loader)


# --- where decode: gpu is refused, and what it says on a CPU -----------------------------------
@pytest.mark.parametrize("backend", ["dali", "stream"])
def test_decode_gpu_is_refused_with_the_dali_and_stream_backends(backend, shards):
    with pytest.raises(RecipeError, match=rf"data\.loader.*decode=gpu works with "
                                          rf"data\.loader\.backend=torch only, not {backend}"):
        recipe_from_dict({"data": {"loader": {"backend": backend, "decode": "gpu"}}})
    index = ShardIndex.load(shards[3]).load_all()
    ds = ManifestDataset(index, np.arange(len(index)), index.label, EvalView(eval_spec(16), 3))
    with pytest.raises(RecipeError, match="data.loader.decode=gpu"):
        build_loader(ds, EpochSampler(len(ds), batch_size=4),
                     LoaderSettings(backend=backend, decode="gpu"), device=CPU, mean=(0.5,) * 3,
                     std=(0.5,) * 3)
    ok = recipe_from_dict({"data": {"loader": {"decode": "gpu"}}})
    assert stage_settings(SimpleNamespace(recipe=ok), 3).decode == "gpu"


def test_on_a_cpu_device_it_says_once_that_decoding_is_not_on_a_gpu(shards, ltscale_log,
                                                                  monkeypatch):
    monkeypatch.setattr(decode_gpu_module, "_warned", False)
    index = ShardIndex.load(shards[3]).load_all()
    for _ in range(2):
        collect(make(index, EvalView(eval_spec(16), 3), "gpu", shuffle="none")[0])
    said = [line for line in ltscale_log if "not on a GPU" in line]
    assert len(said) == 1 and "torchvision's CPU decoder" in said[0]
