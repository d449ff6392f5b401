import gzip
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


@pytest.fixture
def tiny_idx(tmp_path) -> Path:
    """A miniature MNIST-style IDX dataset: 3 classes, 20 train and 6 test images of 8×8."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny-idx"
    root.mkdir()
    for split, n in (("train", 60), ("t10k", 12)):
        labels = np.arange(n) % 3
        images = rng.integers(0, 255, size=(n, 8, 8))
        images[:, 0, 0] = labels * 100  # a pixel that identifies the class
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


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
