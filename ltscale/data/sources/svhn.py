"""SVHN (Street View House Numbers), the cropped-digit "format 2" MATLAB files.

PATH holds ``train_32x32.mat`` (73,257 images), ``test_32x32.mat`` (26,032) and optionally
``extra_32x32.mat`` (531,131; Yang & Xu 2020 draw their unlabeled pool D_U from it). Each file is
a MATLAB v5 file with ``X``, a 32×32×3×N uint8 array (height, width, RGB, image), and ``y``, an
N×1 array of labels 1…10 where 10 stands for the digit 0. Labels become the digit itself: class
``"0"`` … ``"9"`` is label 0 … 9. Images are stored as lossless PNG.

Options (strings, as the CLI passes them): ``splits="train,test"`` keeps only those splits (and
reads only their files). Default: train and test, plus extra when its file is present.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef, parse_splits

SPLITS = ("train", "test", "extra")
CLASSES = [str(d) for d in range(10)]
PUBLIC_SIZES = {"train": 73_257, "test": 26_032, "extra": 531_131}
_URL = "http://ufldl.stanford.edu/housenumbers/"


def file_name(split: str) -> str:
    return f"{split}_32x32.mat"


def load_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(X, digits)`` of one SVHN file, checked: X is 32×32×3×N uint8, digits are 0…9."""
    from scipy.io import loadmat  # the reader of MATLAB v5 files

    if not path.is_file():
        raise DataError(f"svhn: {path.name} not found in {path.parent}; download it from {_URL}")
    try:
        mat = loadmat(path)
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        raise DataError(f"{path}: a MATLAB v7.3 file; SVHN's public files are MATLAB v5, "
                        "re-download it") from None
    except Exception as exc:  # any failure to decode a user file is corruption
        raise DataError(f"{path}: truncated or corrupt MATLAB file ({type(exc).__name__}: "
                        f"{exc}); re-download it") from None
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: no '{key}' variable (found: "
                            f"{', '.join(k for k in mat if not k.startswith('__')) or 'none'})")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(f"{path}: 'X' should be a 32×32×3×N uint8 array, found shape "
                        f"{x.shape}, dtype {x.dtype}")
    n = x.shape[3]
    if y.ndim not in (1, 2) or (y.ndim == 2 and 1 not in y.shape) or y.size != n:
        raise DataError(f"{path}: 'y' should hold one label per image ({n}), found shape "
                        f"{y.shape}")
    labels = y.reshape(-1)
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        row = int(np.flatnonzero(labels != np.round(labels))[0])
        raise DataError(f"{path}: row {row} has label {labels[row]}, not a whole number")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 1) | (labels > 10))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: row {row} has label {int(labels[row])}, outside 1…10 (10 is the "
                        f"digit 0; {len(bad)} bad rows in all)")
    return x, labels % 10


class SvhnSource:
    def __init__(self, root: Path, splits: str | list[str] | None = None):
        if not root.is_dir():
            raise DataError(f"svhn: folder not found: {root}. Download train_32x32.mat, "
                            f"test_32x32.mat (and extra_32x32.mat) from {_URL} into one folder")
        present = ["train", "test"] + (["extra"] if (root / file_name("extra")).is_file() else [])
        self._splits = parse_splits(splits, present, "svhn", known=SPLITS)
        self.root, self.name, self.kind = root, "svhn", "svhn"
        self.classes = list(CLASSES)
        self.extra_labels: dict[str, list[str] | None] = {}
        # per split: the X array as loaded (shared by forked workers); a ref's locator is its row
        self._data: dict[str, np.ndarray] = {}
        self._refs: dict[str, list[SampleRef]] = {}
        for split in self._splits:
            name = file_name(split)
            x, digits = load_mat(root / name)
            self._data[split] = x
            self._refs[split] = [
                SampleRef(key=f"{split}-{row:06d}", split=split, label=int(digits[row]),
                          ext="png", path=f"{name}:{row}", locator=row)
                for row in range(len(digits))]

    def splits(self) -> list[str]:
        return list(self._splits)

    def refs(self, split: str) -> list[SampleRef]:
        if split not in self._refs:
            raise DataError(f"svhn: no split {split!r}; splits: {', '.join(self._splits)}")
        return self._refs[split]

    def pixels(self, ref: SampleRef) -> np.ndarray:
        """The 32×32×3 uint8 image of ``ref``."""
        return self._data[ref.split][:, :, :, ref.locator]

    def read(self, ref: SampleRef) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self.pixels(ref))).save(buf, format="PNG")
        return buf.getvalue()


@register_source("svhn")
def _open_svhn(path: Path, **options) -> SvhnSource:
    return SvhnSource(path, **options)
