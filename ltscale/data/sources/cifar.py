"""CIFAR-10 / CIFAR-100, the "python version" pickles.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` … ``data_batch_5`` (train), ``test_batch``,
``batches.meta`` (label_names). CIFAR-100 (``cifar-100-python/``): ``train``, ``test``, ``meta``
(fine_label_names, coarse_label_names); the superclass is kept as the ``coarse_label`` column.
Each batch is a dict with ``data`` (N×3072 uint8: 1024 red, 1024 green, 1024 blue values of a
32×32 image, row-major), labels and file names. Images are stored as lossless PNG.

The pickles are read with an allow-list unpickler: only the numpy array reconstruction the
CIFAR files need can be called, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef
from ltscale.errors import DataError

_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, fh, where: Path):
        super().__init__(fh, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise DataError(f"{self.where}: refusing to load {module}.{name} from the pickle; a "
                            "CIFAR batch holds only arrays, lists and strings")
        return super().find_class(module, name)


def load_batch(path: Path) -> dict:
    if not path.exists():
        raise DataError(f"CIFAR batch file not found: {path}")
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, path).load()
    except DataError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            AttributeError) as exc:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
                        "re-download the dataset") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


_LAYOUT = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label": "labels", "names": "label_names"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta", "label": "fine_labels",
                 "names": "fine_label_names"},
}


class CifarSource:
    def __init__(self, root: Path, kind: str):
        if not root.is_dir():
            raise DataError(f"{kind}: folder not found: {root}")
        other = "cifar100" if kind == "cifar10" else "cifar10"
        layout = _LAYOUT[kind]
        if not (root / layout["meta"]).exists() and (root / _LAYOUT[other]["meta"]).exists():
            raise DataError(f"{root} holds {other.upper()} files; build it with kind {other}")
        self.name, self.kind = kind, kind
        meta = load_batch(root / layout["meta"])
        self.classes = _names(meta[layout["names"]])
        self.extra_labels = ({"coarse_label": _names(meta["coarse_label_names"])}
                             if kind == "cifar100" else {})
        self._pixels: dict[str, np.ndarray] = {}
        self._refs: dict[str, list[SampleRef]] = {}
        for split in ("train", "test"):
            pixels, refs = [], []
            for name in layout[split]:
                batch = load_batch(root / name)
                data, labels = batch.get("data"), batch.get(layout["label"])
                if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072:
                    raise DataError(f"{root / name}: 'data' should be an N×3072 uint8 array, "
                                    f"found {getattr(data, 'shape', type(data).__name__)}")
                if labels is None or len(labels) != len(data):
                    raise DataError(f"{root / name}: {0 if labels is None else len(labels)} "
                                    f"labels for {len(data)} images")
                coarse = batch.get("coarse_labels") if kind == "cifar100" else None
                files = _names(batch.get("filenames", [""] * len(data)))
                for row, label in enumerate(labels):
                    if not 0 <= int(label) < len(self.classes):
                        raise DataError(f"{root / name}: row {row} has label {label}, outside "
                                        f"the {len(self.classes)} classes")
                    extra = (("coarse_label", int(coarse[row])),) if coarse is not None else ()
                    i = len(refs)
                    refs.append(SampleRef(key=f"{split}-{i:05d}", split=split, label=int(label),
                                          ext="png", path=f"{name}:{row}:{files[row]}",
                                          extra=extra, locator=i))
                pixels.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            self._pixels[split] = np.concatenate(pixels)
            self._refs[split] = refs

    def splits(self) -> list[str]:
        return ["train", "test"]

    def refs(self, split: str) -> list[SampleRef]:
        return self._refs[split]

    def read(self, ref: SampleRef) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self._pixels[ref.split][ref.locator])).save(
            buf, format="PNG")
        return buf.getvalue()


@register_source("cifar10")
def _open_cifar10(path: Path, **options) -> CifarSource:
    return CifarSource(path, "cifar10", **options)


@register_source("cifar100")
def _open_cifar100(path: Path, **options) -> CifarSource:
    return CifarSource(path, "cifar100", **options)
