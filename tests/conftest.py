import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


class LogLines(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def ltscale_log():
    """The messages ltscale logs during the test (its ``ltscale`` logger tree), in order."""
    handler = LogLines()
    logger = logging.getLogger("ltscale")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


# --- the one factory of tiny datasets (every tier builds its data here) -------------------------

def make_idx(root: Path, train: int = 60, test: int = 12) -> Path:
    """A miniature MNIST-style IDX dataset under ``root``: 3 classes of 8×8 random images with
    one pixel that identifies the class, ``train`` and ``test`` images (labels cycle 0, 1, 2)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("t10k", test)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 255, size=(n, 8, 8))
        images[:, 0, 0] = labels * 100  # a pixel that identifies the class
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


JPEG_CLASSES = ("ant", "bee", "cat")


def jpeg_bytes(rng: np.random.Generator, label: int, size: int = 16) -> bytes:
    """A random RGB JPEG whose top-left quarter is the class's colour (learnable classes)."""
    import io

    from PIL import Image

    pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    pixels[: size // 2, : size // 2] = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]])[label]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_jpeg_dataset(root: Path, per_class: int, *, test_per_class: int = 0,
                      corrupt_key: str | None = None, shard_bytes: int = 6000,
                      seed: int = 0) -> tuple[Path, Path]:
    """(shards, manifest path): ``per_class`` 16-px JPEGs per class of ``JPEG_CLASSES`` as an
    ImageFolder under ``root/images`` (``images/train`` and ``images/test`` with
    ``test_per_class`` > 0), built by ltscale's real shard writer into ``root/shards``
    (``shard_bytes`` per shard) and a manifest over the train split
    (``root/train.manifest.npz``). ``corrupt_key`` names a sample whose JPEG is cut in half
    before the build: shards, index and card stay consistent, only decoding it fails."""
    from ltscale.data.index import ShardIndex
    from ltscale.data.manifest import build_manifest
    from ltscale.data.manifest_spec import ManifestSpec
    from ltscale.data.shards import build_shards
    from ltscale.data.sources import open_source

    rng = np.random.default_rng(seed)
    images = root / "images"
    splits = [("train", per_class), ("test", test_per_class)] if test_per_class else \
        [("", per_class)]
    for split, n in splits:
        for label, name in enumerate(JPEG_CLASSES):
            folder = images / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                data = jpeg_bytes(rng, label)
                key = f"{name}_{i:03d}"
                if key == corrupt_key:
                    data = data[: len(data) // 2]  # a JPEG cut short: decoding must fail
                (folder / f"{key}.jpg").write_bytes(data)
    shards = root / "shards"
    build_shards(open_source("imagefolder", images), shards, source_kind="imagefolder",
                 source_path=str(images), shard_bytes=shard_bytes, progress=False)
    manifest = build_manifest(ShardIndex.load(shards), ManifestSpec(split="train", seed=seed))
    path = root / "train.manifest.npz"
    manifest.save(path)
    return shards, path


@pytest.fixture
def tiny_idx(tmp_path) -> Path:
    """``make_idx``: 3 classes, 60 train and 12 test images of 8×8."""
    return make_idx(tmp_path / "tiny-idx")


def tiny_pipeline_recipe(tiny_idx: Path, out: Path, shards: Path) -> dict:
    """A whole-pipeline recipe (as a dict, for ``recipe_from_dict``) on ``tiny_idx``: a tiny
    ResNet, one SimSiam epoch, an LA+SL linear head, no baselines; seconds on a CPU."""
    return {
        "name": "tiny", "output_dir": str(out), "device": "cpu",
        "data": {"source": {"kind": "idx", "path": str(tiny_idx)}, "shards": str(shards),
                 "image_size": 8, "channels": 1, "mean": [0.5], "std": [0.25]},
        "manifest": {"imbalance": "exp:4", "noise": "sym:0.4"},
        "pretrain": {"backbone": {"name": "resnet_tiny"}, "epochs": 1, "batch_size": 8,
                     "workers": 0, "method": {"name": "simsiam", "proj_dim": 16, "pred_dim": 8},
                     "knn": {"bank_per_class": 4, "queries": 12}},
        "finetune": {"epochs": 2, "batch_size": 8, "workers": 0, "loss": {"name": "la_sl"}},
        "baselines": {"random_encoder": False, "ce_scratch": {"enabled": False}}}


class FailingFile:
    """An open file whose writes fail with ``exc`` (default: ENOSPC, as a full disk's would)
    once ``room`` more bytes are written: the fault of a disk filling during a save."""

    def __init__(self, fh, room: int, exc: BaseException | None = None):
        import errno
        import os

        self.fh, self.room = fh, room
        self.exc = exc or OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data) -> int:
        if len(data) > self.room:
            raise self.exc
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


def fashion_available() -> bool:
    return (FASHION / "train-images-idx3-ubyte.gz").exists()


needs_fashion = pytest.mark.skipif(
    not fashion_available(),
    reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (CI installs it)")


def read_in_forked_child(src, ref) -> bytes:
    """What ``src.read(ref)`` gives in a forked child (a loader worker), as the parent sees it:
    sources must stay readable after a fork (open handles, caches)."""
    import os

    expected = src.read(ref)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.write(w, b"ok" if src.read(ref) == expected else b"no")
        finally:
            os._exit(0)
    os.close(w)
    try:
        return os.read(r, 2)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
