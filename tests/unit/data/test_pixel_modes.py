"""Every Pillow mode reaches the model as what it means, or is refused naming the sample.

Issue #29: a 16-bit PNG (mode I;16) was clipped to 8 bits by ``convert``, so an image of 256 grey
levels trained as 2 levels. ``data.pixels.to_mode`` scales it, drops alpha as DALI does, and
refuses float / 32-bit samples; ``data verify --deep`` reports those by shard and key.
"""

import gc
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from ltscale.cli import main as cli
from ltscale.core.errors import DataError
from ltscale.data.augment import eval_spec, make_preset
from ltscale.data.augment_torch import EvalView, TrainViews
from ltscale.data.dataset import ManifestDataset
from ltscale.data.index import ShardIndex
from ltscale.data.pixels import to_mode, unreadable
from ltscale.data.shards import build_shards
from ltscale.data.sources.base import SampleRef
from ltscale.data.verify import verify_dataset

LEVELS = np.arange(256, dtype=np.uint16).reshape(16, 16)


def encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png16(values: np.ndarray) -> bytes:
    data = encoded(Image.fromarray(values.astype(np.uint16)))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    return data


def float_tiff() -> bytes:
    return encoded(Image.fromarray((LEVELS / 255).astype(np.float32)), "TIFF")


# --- 16-bit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_a_16_bit_png_keeps_its_256_levels(channels):
    data = png16(LEVELS * 257)  # level k stored as k·257: k at 8 bits
    x = EvalView(eval_spec(16), channels)(data)
    assert x.shape == (channels, 16, 16) and x.dtype.is_floating_point is False
    for c in range(channels):
        np.testing.assert_array_equal(x[c].numpy(), LEVELS)
    views = TrainViews(make_preset("simclr", 16, channels, views=1), channels)(
        data, np.random.default_rng(0))
    assert len(np.unique(views.numpy())) > 64  # was 2 (0 and 255)


def test_16_bit_samples_are_scaled_by_255_over_65535_rounded():
    wide = np.array([[0, 128, 129, 32767, 32768, 65280, 65535, 4660]], dtype=np.uint16)
    got = np.asarray(to_mode(Image.open(io.BytesIO(png16(wide))), "L"))
    np.testing.assert_array_equal(got, [[0, 0, 1, 127, 128, 254, 255, 18]])  # as DALI decodes
    as_i = Image.fromarray(wide.astype(np.int32))  # mode I, as older Pillow opens 16-bit PNGs
    as_i.format = "PNG"
    np.testing.assert_array_equal(np.asarray(to_mode(as_i, "L")), got)
    rgb = np.asarray(to_mode(Image.open(io.BytesIO(png16(wide))), "RGB"))
    assert rgb.shape == (1, 8, 3) and (rgb == got[..., None]).all()


# --- alpha, palettes, CMYK and the rest: read as stored, without a warning ---------------------
def test_palette_with_transparency_reads_its_stored_colours_without_a_warning():
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 255, 10, 20, 30, 200, 100, 50])
    img.putdata([0, 1, 2])
    data = encoded(img, transparency=bytes([0, 128]))
    opened = Image.open(io.BytesIO(data))
    assert opened.mode == "P" and isinstance(opened.info["transparency"], bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = np.asarray(to_mode(Image.open(io.BytesIO(data)), "RGB"))
        grey = np.asarray(to_mode(Image.open(io.BytesIO(data)), "L"))
    np.testing.assert_array_equal(rgb[0], [[255, 0, 255], [10, 20, 30], [200, 100, 50]])
    np.testing.assert_array_equal(grey[0], [105, 18, 124])  # ITU-R 601 luma of those colours


@pytest.mark.parametrize("mode, value, want_rgb", [
    ("LA", (90, 0), (90, 90, 90)),                    # alpha dropped, grey kept
    ("La", (90, 255), (90, 90, 90)),
    ("PA", None, None),
    ("RGBA", (10, 20, 30, 0), (10, 20, 30)),
    ("RGBa", (10, 20, 30, 255), (10, 20, 30)),
    ("CMYK", (0, 0, 0, 128), (127, 127, 127)),
    ("YCbCr", (128, 128, 128), (128, 128, 128)),
    ("LAB", (255, 128, 128), None),
    ("HSV", (0, 0, 200), (200, 200, 200)),
    ("1", 1, (255, 255, 255)),
])
def test_every_other_8_bit_mode_converts_to_both_channel_counts(mode, value, want_rgb):
    img = Image.new(mode, (2, 2), value) if value is not None else Image.new(mode, (2, 2))
    for target, shape in (("RGB", (2, 2, 3)), ("L", (2, 2))):
        out = to_mode(img, target)
        assert out.mode == target and np.asarray(out).shape == shape
    if want_rgb:
        assert to_mode(img, "RGB").getpixel((0, 0)) == want_rgb


# --- refused: no defined 0..255 reading -----------------------------------------------------------
def test_float_and_32_bit_images_are_refused_naming_the_mode():
    f = Image.open(io.BytesIO(float_tiff()))
    assert f.mode == "F" and "mode F (32-bit float samples)" in unreadable(f)
    with pytest.raises(ValueError, match=r"pixels of mode F \(32-bit float samples\) have no "
                                         r"defined 0..255 reading"):
        EvalView(eval_spec(16), 3)(float_tiff())
    i32 = Image.fromarray(np.full((2, 2), 70000, dtype=np.int32))  # not from a PNG
    with pytest.raises(ValueError, match=r"mode I \(32-bit integer samples\)"):
        to_mode(i32, "L")


# --- data verify --deep: samples training would refuse, by shard and key ------------------------
class _Blobs:
    """A minimal source: one split of named encoded images."""

    name, classes, extra_labels = "blobs", ["a"], {}

    def __init__(self, blobs: dict[str, tuple[str, bytes]]):
        self.blobs = blobs

    def splits(self):
        return ["train"]

    def refs(self, split):
        return [SampleRef(key=k, split="train", label=0, ext=ext, path=f"{k}.{ext}",
                          size=len(b), locator=k) for k, (ext, b) in self.blobs.items()]

    def read(self, ref):
        return self.blobs[ref.locator][1]


def test_verify_deep_names_the_samples_training_would_refuse(tmp_path, capsys):
    blobs = {"grey16": ("png", png16(LEVELS * 257)), "floaty": ("tif", float_tiff()),
             "cmyk": ("jpg", encoded(Image.new("CMYK", (8, 8), (0, 50, 100, 10)), "JPEG"))}
    out = tmp_path / "ds"
    build_shards(_Blobs(blobs), out, source_kind="test", source_path=str(tmp_path / "src"),
                 progress=False)
    report = verify_dataset(out, deep=True, progress=False)
    assert [(p.key, p.what.split(":")[0]) for p in report.problems] == [
        ("floaty", "training would refuse it")]
    assert report.decoded == 2 and "mode F" in str(report.problems[0])
    assert str(report.problems[0]).startswith(f"{report.problems[0].shard}: sample floaty: ")
    assert verify_dataset(out, deep=False, progress=False).ok  # only decoding finds it
    index = ShardIndex.load(out)
    ds = ManifestDataset.from_split(index, "train", EvalView(eval_spec(8), 3))
    keys = [str(k) for k in index.load_all().key[ds.rows]]
    assert ds[keys.index("grey16")][0].shape == (3, 8, 8)
    with pytest.raises(DataError, match=r"^sample floaty in shard \S+: cannot decode image "
                                        r"\(pixels of mode F \(32-bit float samples\)"):
        ds[keys.index("floaty")]
    capsys.readouterr()
    assert cli(["data", "verify", str(out), "--deep"]) == 1
    shown = capsys.readouterr().out
    assert "sample floaty: training would refuse it: pixels of mode F" in shown


# --- the DALI backend reads the same pixels -------------------------------------------------------
def test_the_dali_decoder_reads_16_bit_palette_and_alpha_images_alike():
    dali = pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed")
    fn, types = dali.fn, dali.types
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 255, 10, 20, 30, 200, 100, 50])
    palette.putdata([0, 1, 2])
    ramp = np.tile(np.array([0, 85, 170, 255], np.uint8), (4, 1))
    blobs = [png16(np.arange(65536, dtype=np.uint16).reshape(256, 256)),
             encoded(palette, transparency=bytes([0, 128])),
             encoded(Image.fromarray(np.dstack([ramp // 3, ramp, 255 - ramp, ramp]), "RGBA")),
             encoded(Image.fromarray(np.dstack([ramp // 2, 255 - ramp]), "LA"))]
    for out, mode in ((types.RGB, "RGB"), (types.GRAY, "L")):
        @dali.pipeline_def(batch_size=len(blobs), num_threads=1, device_id=None)
        def pipe():
            x = fn.external_source(source=lambda: [np.frombuffer(b, np.uint8) for b in blobs],
                                   batch=True)
            return fn.decoders.image(x, device="cpu", output_type=out)

        p = pipe()
        p.build()
        decoded = [np.asarray(t) for t in p.run()[0]]
        # the pipeline (and its worker threads) must be gone before any later test forks: a
        # forked loader worker that collects a live pipeline hangs in its shutdown
        del p, pipe
        gc.collect()
        for i, data in enumerate(blobs):
            ours = np.asarray(to_mode(Image.open(io.BytesIO(data)), mode)).astype(int)
            theirs = decoded[i].reshape(ours.shape).astype(int)
            # colour to grey: the two luma formulas round apart by 1, for any RGB image alike
            slack = 1 if mode == "L" and i in (1, 2) else 0
            assert np.abs(theirs - ours).max() <= slack, (mode, i)
