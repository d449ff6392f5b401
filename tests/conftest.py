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
