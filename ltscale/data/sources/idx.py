"""IDX files (MNIST, Fashion-MNIST, KMNIST, EMNIST), plain or gzipped.

Layout of an IDX file: two zero bytes, a type code, the number of dimensions, one big-endian
uint32 per dimension, then the values in C order. Images are re-encoded losslessly as PNG.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]

# (split, images-name stem, labels-name stem); EMNIST prefixes these with "emnist-<subset>-"
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_EMNIST_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("test-images-idx3-ubyte", "test-labels-idx1-ubyte"),
}

INSTALL_HINT = (
    "The bundled default data is Fashion-MNIST as Debian ships it: "
    "run `apt-get install dataset-fashion-mnist` (as root) to put the IDX files under "
    "/usr/share/datasets/fashion-mnist/, or pass --data PATH to a folder holding "
    "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz] "
    "and t10k-labels-idx1-ubyte[.gz]."
)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array, validating magic and length."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the gzip file is truncated or corrupt. "
                        "Re-download or reinstall it.") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
                        "expected 0000 followed by a type code 08-0e and a dimension count)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        raise DataError(f"{path}: IDX body has {found} bytes but its header {list(dims)} "
                        f"declares {expected}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _find(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        hits = sorted(root.glob(f"*{name}")) if root.is_dir() else []
        hits = [h for h in hits if h.name.endswith(name)]
        if hits:
            return hits[0]
    return None


class IdxSource:
    """Train/test IDX image and label pairs found in one folder."""

    def __init__(self, root: Path, classes: list[str] | None = None, transpose: bool | None = None):
        if not root.exists():
            raise DataError(f"data directory not found: {root}. {INSTALL_HINT}")
        if not root.is_dir():
            raise DataError(f"{root} is not a directory of IDX files. {INSTALL_HINT}")
        self.root = root
        emnist = any(p.name.startswith("emnist-") for p in root.iterdir())
        stems = _EMNIST_STEMS if emnist else _SPLIT_STEMS
        self._files: dict[str, tuple[Path, Path]] = {}
        for split, (img_stem, lbl_stem) in stems.items():
            img, lbl = _find(root, img_stem), _find(root, lbl_stem)
            if img and lbl:
                self._files[split] = (img, lbl)
            elif img or lbl:
                missing = lbl_stem if img else img_stem
                raise DataError(f"{root}: found the {split} {'images' if img else 'labels'} "
                                f"but not {missing}[.gz]; both files of a split are needed")
        if not self._files:
            raise DataError(f"no IDX files in {root}. {INSTALL_HINT}")
        # EMNIST stores images transposed relative to MNIST
        self.transpose = emnist if transpose is None else transpose
        self.name = root.name
        self.extra_labels: dict[str, list[str] | None] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if classes is None:
            labels = np.concatenate([self._arrays(s)[1] for s in self._files])
            n = int(labels.max()) + 1
            classes = FASHION_MNIST_CLASSES if "fashion" in root.name.lower() and n == 10 else [
                str(i) for i in range(n)]
        self.classes = list(classes)

    def splits(self) -> list[str]:
        return list(self._files)

    def _arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._cache:
            img_path, lbl_path = self._files[split]
            images, labels = read_idx(img_path), read_idx(lbl_path)
            if images.ndim != 3:
                raise DataError(f"{img_path}: expected a 3-d image array (N, H, W), got shape "
                                f"{images.shape}")
            if labels.ndim != 1 or len(labels) != len(images):
                raise DataError(f"{lbl_path}: {len(labels)} labels for {len(images)} images in "
                                f"{img_path.name}; the files do not belong together")
            self._cache[split] = (images, labels.astype(np.int64))
        return self._cache[split]

    def refs(self, split: str) -> list[SampleRef]:
        labels = self._arrays(split)[1]
        return [SampleRef(key=f"{split}-{i:06d}", split=split, label=int(labels[i]), ext="png",
                          path=f"{self._files[split][0].name}[{i}]", locator=i)
                for i in range(len(labels))]

    def read(self, ref: SampleRef) -> bytes:
        px = self._arrays(ref.split)[0][ref.locator]
        return encode_png(np.ascontiguousarray(px.T if self.transpose else px))


@register_source("idx")
def _open_idx(path: Path, **options) -> IdxSource:
    return IdxSource(path, **options)
