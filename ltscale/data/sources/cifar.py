"""CIFAR-10 / CIFAR-100, the "python version" pickles.

CIFAR-10 (``cifar-10-batches-py/``): ``data_batch_1`` … ``data_batch_5`` (train, in that order),
``test_batch``, ``batches.meta`` (label_names). CIFAR-100 (``cifar-100-python/``): ``train``,
``test``, ``meta`` (fine_label_names, coarse_label_names); the fine label is the label and the
superclass is kept as the ``coarse_label`` column. Each batch is a dict with ``data`` (N×3072
uint8: 1024 red, 1024 green, 1024 blue values of a 32×32 image, row-major), labels and file
names. Images are stored as lossless PNG.

The pickles are read with an allow-list unpickler: only the numpy array reconstruction the CIFAR
files need can be called (resolved here, never imported by the name the file gives), so a crafted
file cannot run code.

Training image i (in the order of the batch files) gets the key ``train-{i:05d}``: the position
label files for the CIFAR training set (CIFAR-10N / CIFAR-100N) are indexed by.

Options (strings, as the CLI passes them): ``splits="train,test"`` keeps only those splits (and
reads only their batch files).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ltscale.core.errors import DataError
from ltscale.data.sources import register_source
from ltscale.data.sources.base import SampleRef, parse_splits

_SPLITS = ("train", "test")
_LAYOUT = {
    "cifar10": {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "meta": "batches.meta", "label": "labels", "names": "label_names"},
    "cifar100": {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz",
                 "train": ["train"], "test": ["test"], "meta": "meta", "label": "fine_labels",
                 "names": "fine_label_names"},
}


_LATIN1 = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "iso8859_1", "l1"}


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes: str to latin-1 only."""
    if not isinstance(obj, str) or str(encoding).lower() not in _LATIN1 or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not "
                                     "allowed")
    return obj.encode("latin-1")


def _allowed() -> dict[tuple[str, str], object]:
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.uint8(0).__reduce__()[0]
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("__builtin__", "bytes"): bytes, ("builtins", "bytes"): bytes,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(module, "_reconstruct")] = reconstruct
        table[(module, "scalar")] = scalar
    return table


_ALLOWED = _allowed()


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; anything else is refused before it exists."""

    def __init__(self, fh, where: Path):
        super().__init__(fh, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"{self.where}: refusing to load {module}.{name} from the pickle; a "
                            "CIFAR batch holds only arrays, lists and strings, so this file is "
                            "not a CIFAR file (or was tampered with). Re-download it.") from None

    def persistent_load(self, pid):
        raise DataError(f"{self.where}: refusing a persistent id in the pickle; not a CIFAR file")


def unpickle_arrays(data: bytes, where: Path) -> object:
    """``data`` unpickled with the same allow-list as the CIFAR batches (numpy arrays, lists,
    dicts, strings); a :class:`DataError` for anything else."""
    return _SafeUnpickler(io.BytesIO(data), where).load()


def load_batch(path: Path) -> dict[str, object]:
    """One CIFAR pickle as a dict with str keys; never runs code from the file."""
    if not path.is_file():
        raise DataError(f"CIFAR batch file not found: {path}")
    try:
        with open(path, "rb") as fh:
            obj = _SafeUnpickler(fh, path).load()
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: truncated or corrupt pickle (declares an impossible size); "
                        "re-download the dataset") from None
    except Exception as exc:  # any failure to decode a user file is corruption
        raise DataError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); "
                        "re-download the dataset") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}; "
                        "not a CIFAR python-version file")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _names(meta: dict, key: str, path: Path) -> list[str]:
    values = meta.get(key)
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, (str, bytes)) for v in values):
        raise DataError(f"{path}: '{key}' should be a non-empty list of class names, found "
                        f"{type(values).__name__ if values is not None else 'nothing'} "
                        f"(keys: {', '.join(sorted(meta))})")
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]


def _int_column(batch: dict, key: str, n: int, path: Path, num: int,
                names_file: Path) -> np.ndarray:
    values = batch.get(key)
    if values is None:
        raise DataError(f"{path}: no '{key}' entry (keys: {', '.join(sorted(batch))})")
    try:
        arr = np.asarray(values) if len(values) else np.zeros(0, np.int64)
    except TypeError:
        arr = None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "iu":
        of = f" of {arr.dtype}" if arr is not None else ""
        raise DataError(f"{path}: '{key}' should be a list of integers, found "
                        f"{type(values).__name__}{of}")
    if len(arr) != n:
        raise DataError(f"{path}: {len(arr)} {key} for {n} images; the file is truncated or "
                        "corrupt, re-download it")
    bad = np.flatnonzero((arr < 0) | (arr >= num))
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: row {row} has label {int(arr[row])}, outside the {num} classes "
                        f"named in {names_file.name} ({key}; {len(bad)} bad rows in all)")
    return arr.astype(np.int64)


class CifarSource:
    def __init__(self, root: Path, kind: str, splits: str | list[str] | None = None):
        layout = _LAYOUT[kind]
        other = "cifar100" if kind == "cifar10" else "cifar10"
        title = kind.upper()
        self._splits = parse_splits(splits, _SPLITS, kind)
        if not root.is_dir():
            raise DataError(f"{kind}: folder not found: {root}. Download the {title} python "
                            f"version ({layout['archive']}), extract it and pass the "
                            f"{layout['folder']}/ folder")
        if not (root / layout["meta"]).exists() and (root / layout["folder"]).is_dir():
            root = root / layout["folder"]  # the folder the archive was extracted into
        if not (root / layout["meta"]).exists():
            theirs = _LAYOUT[other]
            if (root / theirs["meta"]).exists() or (root / theirs["folder"]).is_dir():
                raise DataError(f"{root} holds {other.upper()} files; build it with kind {other}")
            raise DataError(f"{kind}: {layout['meta']} not found in {root}; pass the extracted "
                            f"{layout['folder']}/ folder of {layout['archive']}")
        meta_path = root / layout["meta"]
        meta = load_batch(meta_path)
        if layout["names"] not in meta:
            if _LAYOUT[other]["names"] in meta:
                raise DataError(f"{meta_path} is a {other.upper()} meta file; build it with "
                                f"kind {other}")
        self.root = root
        self.name, self.kind = kind, kind
        self.classes = _names(meta, layout["names"], meta_path)
        coarse_names = _names(meta, "coarse_label_names", meta_path) if kind == "cifar100" else None
        self.extra_labels: dict[str, list[str] | None] = (
            {"coarse_label": coarse_names} if coarse_names is not None else {})
        # per split: one (N, 3072) uint8 array per batch file, kept as loaded (shared by forked
        # workers); a ref's locator is (batch number, row)
        self._data: dict[str, list[np.ndarray]] = {}
        self._refs: dict[str, list[SampleRef]] = {}
        for split in self._splits:
            arrays, refs = [], []
            for b, name in enumerate(layout[split]):
                path = root / name
                batch = load_batch(path)
                data = batch.get("data")
                if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                        or data.shape[1] != 3072):
                    found = (f"shape {data.shape}, dtype {data.dtype}"
                             if isinstance(data, np.ndarray) else type(data).__name__)
                    raise DataError(f"{path}: 'data' should be an N×3072 uint8 array (32×32 RGB "
                                    f"planes), found {found}")
                n = len(data)
                labels = _int_column(batch, layout["label"], n, path, len(self.classes), meta_path)
                coarse = (_int_column(batch, "coarse_labels", n, path, len(coarse_names), meta_path)
                          if coarse_names is not None else None)
                files = batch.get("filenames")
                if files is None:
                    files = [""] * n
                elif not isinstance(files, (list, tuple)) or len(files) != n:
                    found = (f"{len(files)}" if isinstance(files, (list, tuple))
                             else type(files).__name__)
                    raise DataError(f"{path}: 'filenames' should list {n} names, found {found}")
                for row in range(n):
                    fname = files[row]
                    fname = fname.decode("latin1") if isinstance(fname, bytes) else str(fname)
                    extra = (("coarse_label", int(coarse[row])),) if coarse is not None else ()
                    refs.append(SampleRef(key=f"{split}-{len(refs):05d}", split=split,
                                          label=int(labels[row]), ext="png",
                                          path=f"{name}:{row}" + (f":{fname}" if fname else ""),
                                          extra=extra, locator=(b, row)))
                arrays.append(data)
            self._data[split] = arrays
            self._refs[split] = refs

    def splits(self) -> list[str]:
        return list(self._splits)

    def refs(self, split: str) -> list[SampleRef]:
        if split not in self._refs:
            raise DataError(f"{self.kind}: no split {split!r}; splits: {', '.join(self._splits)}")
        return self._refs[split]

    def pixels(self, ref: SampleRef) -> np.ndarray:
        """The 32×32×3 uint8 image of ``ref``."""
        b, row = ref.locator
        return self._data[ref.split][b][row].reshape(3, 32, 32).transpose(1, 2, 0)

    def read(self, ref: SampleRef) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(self.pixels(ref))).save(buf, format="PNG")
        return buf.getvalue()


@register_source("cifar10")
def _open_cifar10(path: Path, **options) -> CifarSource:
    return CifarSource(path, "cifar10", **options)


@register_source("cifar100")
def _open_cifar100(path: Path, **options) -> CifarSource:
    return CifarSource(path, "cifar100", **options)
